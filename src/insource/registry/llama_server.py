"""`python -m insource.registry.llama_server ARGS`: llama-cpp-python's OpenAI server (same ARGS) answering with
`LogprobLlama`, so token log-probs cost next to nothing and need no `--logits_all` (see `registry/llama.py`).
Run by the gateway in a child process it supervises (`service/generative.py`)."""

from __future__ import annotations


def main() -> None:
    import llama_cpp
    from llama_cpp.server.__main__ import main as serve

    from insource.registry.llama import LogprobLlama

    llama_cpp.Llama = LogprobLlama  # type: ignore[misc]  # the server builds its model as llama_cpp.Llama(...)
    serve()


if __name__ == "__main__":
    main()
