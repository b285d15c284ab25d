"""Run TensorZero's gateway for the side-by-side benchmark (run by TensorZero's own venv's python, not ours).

``python bench/_gw/tz_gateway.py --upstream-port P --config-dir DIR``: writes a TensorZero config with one model
(``gpt-4o-mini``, an OpenAI-kind provider at the bench upstream, observability off), starts the Rust gateway that
ships in the ``tensorzero`` wheel in this process (``tensorzero._start_http_gateway``, the helper behind
``patch_openai_client``), prints ``BASE_URL <url>`` and serves until SIGINT/SIGTERM. Clients call
``<url>/openai/v1/chat/completions`` with ``model = "tensorzero::model_name::gpt-4o-mini"``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

CONFIG = """
[gateway.observability]
enabled = false

[models."gpt-4o-mini"]
routing = ["local"]

[models."gpt-4o-mini".providers.local]
type = "openai"
model_name = "gpt-4o-mini"
api_base = "http://127.0.0.1:{port}/v1/"
api_key_location = "none"
"""


def main() -> None:
    import tensorzero

    p = argparse.ArgumentParser()
    p.add_argument("--upstream-port", type=int, required=True)
    p.add_argument("--config-dir", type=Path, required=True)
    args = p.parse_args()
    cfg = args.config_dir / "tensorzero.toml"
    cfg.write_text(CONFIG.format(port=args.upstream_port))
    gateway = tensorzero._start_http_gateway(
        config_file=str(cfg), clickhouse_url=None, postgres_url=None, valkey_url=None, async_setup=False
    )
    print(f"BASE_URL {gateway.base_url}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    gateway.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
