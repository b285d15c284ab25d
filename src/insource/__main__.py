"""`python -m insource` runs the CLI."""

from insource.cli import main

main()
