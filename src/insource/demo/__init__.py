"""`insource demo`: the whole loop on the embedded defaults, from rented teacher to owned student."""
