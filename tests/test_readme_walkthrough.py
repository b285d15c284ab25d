"""README.md's "Use it as a gateway" walkthrough, run as written (issue 10, item 1).

The commands are extracted from the section's fenced blocks, in order: a `toml` or `python` block whose first line
is `# FILENAME` is saved as that file; every line of a `bash` block is run with bash in a fresh folder, each must
exit 0. Lines ending in `&` are started in the background (as the README does) and waited for on the port they
name. The only substitutions are the two ports (free ones are taken) and `insource`/`python` resolving to this
interpreter. The walkthrough must end with the task routed in cascade mode and requests answered by the student.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Use it as a gateway"
AFTER = "## After the walkthrough"  # its commands run in the walkthrough's folder, the gateway still up
PORTS = ("9000", "8700", "8701")  # the fake upstream's and the gateway's, as the README writes them
FENCE = re.compile(r"^```(\w+)\n(.*?)^```\n", re.S | re.M)
STEP_TIMEOUT_S = 300


@dataclass
class Step:
    kind: str  # "file" | "run"
    text: str  # the command, or the file's content
    name: str = ""  # the file name


def section(readme: str, title: str = SECTION) -> str:
    start = readme.index(title)
    end = re.compile(r"^#{2,3} ", re.M).search(readme, start + len(title))
    return readme[start : end.start() if end else len(readme)]


def extract_steps(text: str) -> list[Step]:
    """The section's files and commands, in order."""
    steps: list[Step] = []
    for lang, body in FENCE.findall(text):
        if lang in ("toml", "python"):
            first = body.splitlines()[0]
            match = re.match(r"#\s*([\w.\-]+\.(?:toml|py))\b", first)
            assert match, f"a {lang} block must start with '# FILENAME': {first!r}"
            steps.append(Step("file", body, match.group(1)))
        elif lang == "bash":
            steps += [Step("run", line) for line in body.splitlines() if line.strip() and not line.startswith("#")]
    return steps


def test_the_section_holds_the_whole_walkthrough() -> None:
    """The extraction itself: files first, then the commands of the loop, ending on student-answered traffic."""
    steps = extract_steps(section((ROOT / "README.md").read_text("utf-8")))
    names = [s.name for s in steps if s.kind == "file"]
    runs = [s.text.split("#")[0].strip() for s in steps if s.kind == "run"]
    assert names == ["insource.toml", "traffic.py"]
    for needed in ("insource.demo.teacher", "keys create", "serve", "dataset build", "distill", "eval", "route set"):
        assert any(needed in r for r in runs), needed
    assert any("--mode cascade" in r for r in runs) and runs[-1].startswith("python traffic.py")


# -- running it ------------------------------------------------------------------------------------------------
def _shims(folder: Path) -> dict[str, str]:
    """`insource` and `python` on PATH are this interpreter, with this checkout's src first on PYTHONPATH."""
    folder.mkdir()
    for name, target in (
        ("insource", f'exec "{sys.executable}" -m insource "$@"'),
        ("python", f'exec "{sys.executable}" "$@"'),
    ):
        path = folder / name
        path.write_text(f"#!/bin/sh\n{target}\n")
        path.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("INSOURCE_")}
    env["PATH"] = f"{folder}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    return env


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"background command exited ({proc.returncode}):\n{log.read_text()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on port {port} after {timeout}s:\n{log.read_text()}")


class Walkthrough:
    """Runs steps in one folder; `export`s carry over from one command to the next, as in one shell."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder, self.env_file = folder, folder.parent / "walkthrough.env"
        self.env = env
        self.background: list[subprocess.Popen[bytes]] = []
        self.outputs: list[tuple[str, str]] = []
        self.env_file.write_text("")

    def run(self, command: str) -> str:
        line = command.split(" #")[0].rstrip() if " #" in command else command.rstrip()
        if line.endswith("&"):
            self._start(line[:-1].strip())
            return ""
        body = f"{command}\nrc=$?\n"
        export = re.match(r"export (\w+)=(\$\(.*\))\s*(#.*)?$", command)
        if export:  # `export X=$(cmd)` would hide cmd's exit code; a plain assignment keeps it
            body = f"{export.group(1)}={export.group(2)}\nrc=$?\nexport {export.group(1)}\n"
        script = (
            f"set -o pipefail -o allexport\nsource {shlex.quote(str(self.env_file))}\n{body}"  # VAR=... carries on too
        )
        script += f"export -p > {shlex.quote(str(self.env_file))}\nexit $rc\n"
        started = time.monotonic()
        result = subprocess.run(
            ["bash", "-c", script],
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT_S,
        )
        assert result.returncode == 0, f"`{command}` exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        print(f"{time.monotonic() - started:6.1f} s  {command}")  # shown with -s, and on failure
        self.outputs.append((command, result.stdout))
        return result.stdout

    def _start(self, command: str) -> None:
        port = re.search(r"--port (\d+)", command)
        assert port, f"a background command must name its --port: {command}"
        log = self.folder.parent / f"bg-{len(self.background)}.log"
        script = f"source {shlex.quote(str(self.env_file))}\nexec {command}\n"
        with log.open("wb") as out:
            proc = subprocess.Popen(["bash", "-c", script], cwd=self.folder, env=self.env, stdout=out, stderr=out)
        self.background.append(proc)
        _wait_port(int(port.group(1)), proc, log)

    def stop(self) -> None:
        for proc in reversed(self.background):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)

    def exported(self, name: str) -> str:
        out = subprocess.run(
            ["bash", "-c", f'source {shlex.quote(str(self.env_file))}; printf %s "${name}"'],
            env=self.env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        return out.stdout


@pytest.fixture()
def walkthrough(tmp_path: Path, encoder_cache: Path) -> Iterator[tuple[Walkthrough, list[Step]]]:
    readme = (ROOT / "README.md").read_text("utf-8")
    text = section(readme) + "\n" + section(readme, AFTER)
    taken: set[int] = set()
    for port in PORTS:
        while (free := free_port()) in taken:
            pass
        taken.add(free)
        text = re.sub(rf"\b{port}\b", str(free), text)
    folder = tmp_path / "project"
    folder.mkdir()
    # The first distill exports the base encoder (about a minute); the session's copy is put where it would go.
    shutil.copytree(encoder_cache / "encoders", folder / "models" / ".cache" / "encoders")
    run = Walkthrough(folder, _shims(tmp_path / "bin"))
    try:
        yield run, extract_steps(text)
    finally:
        run.stop()


def test_the_readme_walkthrough_runs_to_a_student_answering(walkthrough: tuple[Walkthrough, list[Step]]) -> None:
    run, all_steps = walkthrough
    n = len(extract_steps(section((ROOT / "README.md").read_text("utf-8"))))  # the walkthrough's own steps
    steps, after = all_steps[:n], all_steps[n:]
    for step in steps:
        if step.kind == "file":
            (run.folder / step.name).write_text(step.text, "utf-8")
            continue
        run.run(step.text)
    assert run.exported("INSOURCE_KEY").startswith("isk-")
    last_command, last_output = run.outputs[-1]
    assert last_command.startswith("python traffic.py")
    served = re.search(r"answered by: (\{.*\})", last_output)
    assert served, last_output
    counts = ast.literal_eval(served.group(1))
    sent = int(last_command.split()[2])
    assert sum(counts.values()) == sent and set(counts) <= {"intent@v1", "local:gpt-4o-mini"}, counts
    assert counts.get("intent@v1", 0) >= 0.2 * sent, counts  # what the student is sure of: most (measured: 98%)
    routes = json.loads(run.run("insource route show --json"))
    route = next(r for r in routes if r["task"] == "intent")
    assert (route["mode"], route["model"], route["state"]) == ("cascade", "intent@v1", "answering")
    assert route["threshold"] is not None and route["target_agreement"] == 0.95
    by_server = {r["served_by"]: r for r in json.loads(run.run("insource spend --by served_by --json"))}
    assert by_server["intent@v1"]["requests"] == counts["intent@v1"], by_server  # metered as the student's
    assert by_server["intent@v1"]["cost_avoided_usd"] > 0
    for step in after:  # the next section's examples, as written, in the same folder
        run.run(step.text)
    report = run.folder / "report.html"
    assert report.is_file() and "plotly" in report.read_text("utf-8").lower()
    assert "/ui/login?token=" in (run.folder.parent / f"bg-{len(run.background) - 1}.log").read_text()
