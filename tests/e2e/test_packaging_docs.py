"""Documentation: README.md is a front door that links to every page, every relative link of the
documents resolves (file and heading anchor), and the README's quick start runs as written.

The quick start test takes the shell blocks of the README's "Quick start" section, line by line:
the same commands, with free ports in place of the fixed ones, a test directory in place of
`.work/quickstart`, and ENVOY_BIN and LOSSLESS_WASM in place of `make build envoy`'s outputs.
Lines ending in `&` are started as tracked processes (Envoy also gets its own base id, as every
Envoy of the suite does); the others run in bash. After each block the test checks what the
README says it shows. Needs ENVOY_BIN and LOSSLESS_WASM (`make build`).
"""

import json
import os
import re
import shlex
import subprocess

from harness import membership
from kit import REPO, free_port, wait_http, wait_until, wasm_crash_lines

README = REPO / "README.md"
DOCUMENTS = [README, REPO / "CONTRIBUTING.md", REPO / "BENCHMARKS.md",
             *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 220

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.S)


def prose(text):
    """`text` without fenced code blocks and code spans (their brackets are not links)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading):
    """GitHub's anchor for a heading: lower case, code marks and punctuation dropped (letters,
    digits, `-` and `_` kept), spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = text.replace("`", "").strip().lower()
    text = "".join(c for c in text if c.isalnum() or c in "-_ ")
    return text.replace(" ", "-")


def anchors(path):
    """Every heading anchor of a Markdown file, duplicates numbered as GitHub numbers them."""
    seen = {}
    out = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def relative_links(path):
    """(target path or None for the file itself, anchor or None) of each relative link."""
    out = []
    for target in LINK.findall(prose(path.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:, ...
            continue
        file, _, anchor = target.partition("#")
        out.append((file or None, anchor or None, target))
    return out


def test_documents_have_headings_to_link_to():
    """The anchor check below has something to check: each document has a title, and the slugs
    are GitHub's."""
    for doc in DOCUMENTS:
        assert anchors(doc), doc.name
    assert "quick-start-plain-envoy-in-five-minutes" in anchors(README)
    assert slug("`registries.<name>`") == "registriesname"
    assert slug("Admin endpoints (loopback callers only, 403 otherwise)") == \
        "admin-endpoints-loopback-callers-only-403-otherwise"


def test_relative_links_resolve():
    """Every relative link of README.md, CONTRIBUTING.md, BENCHMARKS.md and docs/*.md names a file
    of the repository that exists, and a heading of it when it has an anchor."""
    problems = []
    checked = 0
    for doc in DOCUMENTS:
        for file, anchor, target in relative_links(doc):
            checked += 1
            where = f"{doc.relative_to(REPO)}: ({target})"
            dest = (doc.parent / file).resolve() if file else doc
            if not dest.is_relative_to(REPO):
                problems.append(f"{where} leaves the repository")
                continue
            if not dest.exists():
                problems.append(f"{where} does not exist")
                continue
            if anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
                problems.append(f"{where}: no heading #{anchor} in {dest.relative_to(REPO)}")
    assert checked > 50, f"only {checked} relative links found: is the link pattern broken?"
    assert not problems, "\n".join(problems)


def test_readme_is_a_front_door_to_every_page():
    """README.md stays short and links to every page of docs/, to CONTRIBUTING.md and to
    BENCHMARKS.md, so that every section moved out of it is one click away."""
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"
    linked = {(README.parent / file).resolve() for file, _, _ in relative_links(README) if file}
    missing = [str(d.relative_to(REPO)) for d in DOCUMENTS[1:] if d.resolve() not in linked]
    assert not missing, f"README.md does not link to {missing}"


def test_readme_gives_the_commands_ci_runs():
    """.ci/run runs the commands the README gives for the tests."""
    ci = (REPO / ".ci" / "run").read_text()
    commands = re.findall(r"^(make \S+)$", ci, re.M)
    assert commands == ["make lint", "make test"], commands
    readme = README.read_text()
    assert re.search(r"^make test +# run the tests", readme, re.M)
    for command in commands:
        assert f"`{command}`" in readme, command


# ------------------------------------------------------------------------------------------------
# the quick start, as written

QUICK_START = "## Quick start: plain Envoy in five minutes"
FIXED_PORTS = ("9001", "9002", "8848", "9901", "10000")
INSTANCE = re.compile(r"^x-instance: (\S+)\s*$", re.M | re.I)


def quick_start_blocks():
    readme = README.read_text()
    start = readme.index(QUICK_START)
    section = readme[start:readme.index("\n## ", start + 1)]
    return re.findall(r"^```sh\n(.*?)^```", section, re.M | re.S)


def commands(block):
    """The logical lines of a shell block (continuations joined), comment lines left out."""
    lines = block.replace("\\\n", " ").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


class QuickStart:
    def __init__(self, procs, workdir, envoy_bin, wasm_path):
        self.procs = procs
        self.work = workdir / "quickstart"
        self.envoy_bin = envoy_bin
        self.wasm = wasm_path
        self.ports = {p: str(free_port()) for p in FIXED_PORTS}
        self.envoy = None

    def port(self, fixed):
        return int(self.ports[fixed])

    def addr(self, fixed):
        return f"127.0.0.1:{self.ports[fixed]}"

    def adapt(self, line):
        line = re.sub(r"\b(" + "|".join(FIXED_PORTS) + r")\b",
                      lambda m: self.ports[m.group(1)], line)
        line = line.replace("$PWD/target/lossless.wasm", str(self.wasm))
        return line.replace(".work/quickstart", str(self.work))

    def run(self, block):
        """Runs one block; returns what its foreground commands printed."""
        out = []
        for line in commands(block):
            if line.startswith("make "):
                # what it builds and installs is what the suite runs with
                assert shlex.split(line, comments=True) == ["make", "build", "envoy"], line
                continue
            argv = shlex.split(self.adapt(line), comments=True)
            if argv[-1] == "&":
                argv = argv[:-1]
                name = f"quickstart-{len(self.procs.procs)}"
                if argv[0] == ".venv/bin/envoy":
                    base_id = (os.getpid() % 20000) * 50 + 49
                    argv = [str(self.envoy_bin), *argv[1:], "--base-id", str(base_id),
                            "--disable-hot-restart"]
                    name = "quickstart-envoy"
                proc = self.procs.start(name, argv, cwd=REPO)
                if name == "quickstart-envoy":
                    self.envoy = proc
                continue
            res = subprocess.run(["bash", "-c", self.adapt(line)], cwd=REPO, capture_output=True,
                                 text=True, timeout=120, stdin=subprocess.DEVNULL)
            assert res.returncode == 0, f"{line}\n{res.stdout}\n{res.stderr}"
            out.append(res.stdout)
        return "".join(out)


def test_readme_quick_start_runs_as_written(procs, tmp_logs, envoy_bin, wasm_path):
    blocks = quick_start_blocks()
    assert len(blocks) == 4, "start, look, offline, back with a warmup"
    qs = QuickStart(procs, tmp_logs, envoy_bin, wasm_path)
    a1, a2 = qs.addr("9001"), qs.addr("9002")

    # start: two instances, the registry, Envoy from the shipped template
    qs.run(blocks[0])
    assert qs.envoy is not None, "the quick start starts Envoy in the background"
    wait_http(f"http://127.0.0.1:{qs.port('9901')}/ready", timeout=60, proc=qs.envoy)
    listen = qs.port("10000")

    def serving():
        return sorted(i["address"] for i in membership(listen)["services"][0]["instances"]
                      if i["state"] == "serving")

    both = sorted([a1, a2])
    wait_until(lambda: serving() == both, timeout=30, what="both instances serving")

    # look: lossless' view, and both instances answer
    out = qs.run(blocks[1])
    doc = json.loads(out.splitlines()[0])
    assert sorted(i["address"] for i in doc["services"][0]["instances"]
                  if i["state"] == "serving") == both, doc
    assert sorted(set(INSTANCE.findall(out))) == both, out

    # 9002 offline in the registry: from the next refresh on, only 9001 answers
    out = qs.run(blocks[2])
    assert INSTANCE.findall(out) == [a1] * 4, out

    # 9002 back, freshly started with a 60 s warmup: serving and warming, its weight low
    doc = json.loads(qs.run(blocks[3]))
    by_addr = {i["address"]: i for i in doc["services"][0]["instances"]}
    back = by_addr[a2]
    assert back["state"] == "serving" and back["warming"] is True, back
    assert 1 <= back["live_weight"] < back["weight"] / 2, back
    assert by_addr[a1]["warming"] is False, by_addr[a1]

    # the --log-path of the quick start holds the filter's log (Envoy flushes it every few s)
    def log():
        return (qs.work / "envoy.log").read_text(errors="replace")

    wait_until(lambda: "membership v" in log(), timeout=20, what="the filter's log in envoy.log")
    assert not wasm_crash_lines(log()), wasm_crash_lines(log())[:20]

