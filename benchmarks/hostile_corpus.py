"""Index a folder of hostile files, then upload each of them to a server, as issue 9's Done-when
asks: exit status, failures, peak memory of the whole indexer (its workers included) and of the
server, and the status of every upload.

    python benchmarks/hostile_corpus.py --files CORPUS --data-dir /tmp/corpus-data

CORPUS is, for instance, Pillow's Tests/images (fetch the Pillow repository; never commit those
files), with every file also copied under a .png name so the indexer reads them all. The server
is the same release serving the collection just indexed; the baseline for its memory is its own
before the first upload. Memory is proportional set size, summed over a process and its
descendants (shared pages counted once), except the server's own high-water mark (RSS).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path


def tree_pss_kib(root: int) -> int:
    """Memory of a process and all its descendants, each shared page counted once in all (their
    proportional set sizes): the decoders share the fork server's pages, torch's among them,
    and summing their resident sizes counted those once per process."""
    parents: dict[int, int] = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines())
        except (OSError, ValueError):
            continue
        parents[int(fields["Pid"])] = int(fields["PPid"])
    family, grew = {root}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in family} - family
        family |= more
        grew = bool(more)
    return sum(_pss_kib(pid) for pid in family)


def _pss_kib(pid: int) -> int:
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:  # it ended meanwhile
        return 0
    fields = (line.split() for line in rollup.splitlines())
    return next((int(field[1]) for field in fields if field[0] == "Pss:"), 0)


def index(files: Path, data_dir: Path) -> dict[str, object]:
    command = [sys.executable, "-m", "clipsearch", "index", str(files), "--data-dir", str(data_dir)]
    command += ["--model", "ViT-B-32", "--pretrained", "none", "--json", "-q"]
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while process.poll() is None:
        peak = max(peak, tree_pss_kib(process.pid))
        time.sleep(0.05)
    stdout, stderr = process.communicate()
    noise = [line for line in stderr.splitlines() if "RANDOM WEIGHTS" not in line]
    return {
        "exit": process.returncode,
        "summary": json.loads(stdout.splitlines()[-1]) if process.returncode == 0 else None,
        "stderr_lines": len(noise),
        "traceback": "Traceback" in stderr,
        "peak_pss_mb": round(peak / 1024, 1),
        "seconds": round(time.monotonic() - started, 1),
    }


def upload(url: str, path: Path) -> int:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x"\r\n\r\n'
        ).encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"{url}/api/search",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def serve_and_upload(files: list[Path], data_dir: Path, port: int) -> dict[str, object]:
    command = [sys.executable, "-m", "clipsearch", "serve", "--data-dir", str(data_dir)]
    command += ["--port", str(port), "-q"]
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                urllib.request.urlopen(f"{url}/healthz", timeout=2)
                break
            except OSError:
                time.sleep(0.3)
        before = tree_pss_kib(server.pid)
        statuses: collections.Counter[int] = collections.Counter()
        peak = 0
        for path in files:
            statuses[upload(url, path)] += 1
            peak = max(peak, tree_pss_kib(server.pid))
        alive = server.poll() is None and urllib.request.urlopen(f"{url}/healthz").status == 200
        hwm = _status_kib(server.pid, "VmHWM")
    finally:
        server.terminate()
        server.wait()
    return {
        "uploads": len(files),
        "statuses": dict(sorted(statuses.items())),
        "server_alive_after": alive,
        "server_and_decoders_pss_before_mb": round(before / 1024, 1),
        "server_peak_rss_mb": round(hwm / 1024, 1),
        "server_and_decoders_peak_pss_mb": round(peak / 1024, 1),
    }


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, default=8791)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    files = sorted(p for p in args.files.rglob("*") if p.is_file())
    report = {"index": index(args.files, args.data_dir)}
    report["upload"] = serve_and_upload(files, args.data_dir, args.port)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
