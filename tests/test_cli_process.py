"""The real console entry point in fresh processes: nothing imported by the test process
can mask a missing import or an uninitialised module (lazy boto3 loading, for one)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import make_checkpoint, tree

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration


def cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archiver.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


# Runs the CLI's main(argv) in a fresh interpreter and, however it ends, prints the names of
# every module it loaded as the last line of stderr.
_MODULES_PROBE = ("import json, sys\n"
                  "from archiver.cli import main\n"
                  "try:\n"
                  "    main(sys.argv[1:])\n"
                  "finally:\n"
                  "    print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n")


def cli_modules(env: dict, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """A CLI run in a fresh process, which must succeed, and the modules it loaded."""
    r = subprocess.run([sys.executable, "-c", _MODULES_PROBE, *args], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r, json.loads(r.stderr.splitlines()[-1])


@pytest.mark.parametrize("backend", ["local", "s3-server"])
def test_fresh_process_round_trip(backend, tmp_path, request):
    url = str(tmp_path / "store") if backend == "local" else request.getfixturevalue("s3_server_url")
    env = {**os.environ, "ARCHIVER_HOME": str(tmp_path / "home"), "ARCHIVER_STORE": url}
    ckpt = make_checkpoint(tmp_path / "src" / "ckpt", layers=2, dim=256)
    r = cli(env, "archive", str(ckpt), "--name", "m", "--json")
    assert r.returncode == 0, r.stderr
    mid = json.loads(r.stdout)["id"]
    assert r.stderr == ""  # --json and not a terminal: no progress, no summary
    for args in (["list", "--json"], ["show", "m", "--json"], ["verify", mid, "--deep", "--json"]):
        r = cli(env, *args)
        assert r.returncode == 0, (args, r.stderr)
        json.loads(r.stdout)
    r = cli(env, "restore", mid, str(tmp_path / "out"), "--json")
    assert r.returncode == 0, r.stderr
    assert tree(tmp_path / "out" / "ckpt") == tree(ckpt)


def test_fresh_process_s3_errors_are_one_line(tmp_path, aws_env):
    env = {**os.environ, "ARCHIVER_HOME": str(tmp_path / "home"), "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
           "ARCHIVER_S3_MAX_ATTEMPTS": "1"}
    r = cli(env, "--store", "s3://bucket/prefix", "list")
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "cannot reach S3 endpoint" in r.stderr and "internal error" not in r.stderr


# What an archive into a local, unsealed store must not import: they are for other stores
# and commands, and every module imported is paid in the serial start of every run
# (issue 12 item 6: archive wall time; bench/RESULTS.md, branch wall).
NOT_FOR_A_LOCAL_ARCHIVE = ("cryptography", "pyrage", "boto3", "botocore", "archiver.costs", "pickletools",
                           "archiver.escrow", "manifests.signing")


def test_archive_into_a_local_store_imports_no_crypto_s3_or_cost_tables(tmp_path):
    ckpt = make_checkpoint(tmp_path / "src" / "ckpt", layers=2, dim=64)
    env = {**os.environ, "ARCHIVER_HOME": str(tmp_path / "home")}
    r, loaded = cli_modules(env, "--store", str(tmp_path / "store"), "archive", str(ckpt), "--name", "m", "--json")
    assert json.loads(r.stdout)["files"] > 0
    assert "archiver.pipeline" in loaded and "archiver.stores.local" in loaded  # the probe saw the run's modules
    unwanted = [m for m in loaded if m in NOT_FOR_A_LOCAL_ARCHIVE or m.split(".")[0] in NOT_FOR_A_LOCAL_ARCHIVE]
    assert unwanted == []
    # nor what only verify, restore and thaw run (~20 ms of the serial start; branch wall2)
    assert [m for m in loaded if m in NOT_FOR_AN_ARCHIVE] == []


NOT_FOR_AN_ARCHIVE = ("archiver.checker", "archiver.restorer", "archiver.thaw")


def test_the_process_entry_point_ends_without_a_final_walk_of_every_object(tmp_path):
    """`main()` as the process's entry point freezes the modules' objects out of the collector
    and collects young objects less often, then at exit freezes everything (the interpreter's
    final collections cost tens of ms of every command's wall time); `main(argv)`, as tests
    and embedders call it, leaves the collector alone."""
    probe = ("import atexit, gc, sys\n"
             "from archiver.cli import main\n"
             "def run(*a, **k):\n"
             "    try:\n"
             "        main(*a, **k)\n"
             "    except SystemExit:\n"
             "        pass\n"
             "default = gc.get_threshold()[0]\n"
             "run(['--version'])\n"
             "atexit._run_exitfuncs()\n"
             "embedded = (gc.get_freeze_count(), gc.get_threshold()[0] == default)\n"
             "sys.argv = ['archiver', '--version']\n"
             "run(end_process=False)  # as the process's entry point, but returning here\n"
             "started = (gc.get_freeze_count(), gc.get_threshold()[0])\n"
             "import json\n"
             "garbage = [[] for _ in range(5000)]  # objects made after the start are frozen only at exit\n"
             "atexit._run_exitfuncs()\n"
             "print(json.dumps([embedded, started, gc.get_freeze_count()]))\n")
    r = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "ARCHIVER_HOME": str(tmp_path / "home")})
    assert r.returncode == 0, r.stderr
    embedded, (frozen_at_start, young_after), frozen_at_exit = json.loads(r.stdout.splitlines()[-1])
    assert embedded == [0, True]  # main(argv): the collector as the interpreter set it
    from archiver.cli import YOUNG_COLLECTION_AFTER
    assert frozen_at_start > 1000 and young_after == YOUNG_COLLECTION_AFTER  # the modules' objects
    assert frozen_at_exit >= frozen_at_start + 5000  # and at exit everything made since


def test_the_process_entry_point_still_writes_everything(tmp_path):
    """With the final collections skipped, a real process still leaves a complete archive
    and its JSON: the catalog lists it and a deep verify finds nothing wrong."""
    env = {**os.environ, "ARCHIVER_HOME": str(tmp_path / "home"), "ARCHIVER_STORE": str(tmp_path / "store")}
    ckpt = make_checkpoint(tmp_path / "src" / "ckpt", layers=2, dim=64)
    r = cli(env, "archive", str(ckpt), "--name", "m", "--json")
    assert r.returncode == 0, r.stderr
    mid = json.loads(r.stdout)["id"]
    r = cli(env, "list", "--json")
    assert [row["id"] for row in json.loads(r.stdout)] == [mid]
    r = cli(env, "verify", mid, "--deep", "--json")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("preset", [None, "2"])
def test_the_process_entry_point_keeps_blas_to_one_thread_unless_told(tmp_path, preset):
    """numpy's OpenBLAS would start (and spin) a thread per extra core when the codec imports
    numpy; the command never uses BLAS. A number the user set is kept."""
    probe = ("import json, os, sys\n"
             "from archiver.cli import main\n"
             "sys.argv = ['archiver', '--version']\n"
             "try:\n"
             "    main(end_process=False)\n"
             "except SystemExit:\n"
             "    pass\n"
             "import numpy\n"
             "print(json.dumps([os.environ.get('OPENBLAS_NUM_THREADS'), len(os.listdir('/proc/self/task'))]))\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if preset is not None:
        env["OPENBLAS_NUM_THREADS"] = preset
    r = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**env, "ARCHIVER_HOME": str(tmp_path / "home")})
    assert r.returncode == 0, r.stderr
    value, threads = json.loads(r.stdout.splitlines()[-1])
    assert value == (preset or "1")
    if preset is None:
        assert threads == 1  # numpy imported, and no BLAS thread beside the main one


# What a deep verify or a restore of a local, unsealed store without signatures must not
# import: the archive pipeline (its format readers, chunker and files cache), cryptography
# (no signature to check), importlib.metadata (the event's agent version), strptime
# (event times) and numpy (no binary file map, no byte-plane chunk in this checkpoint): start-up paid by every run (issue 15 item 6; bench/RESULTS.md, branch readstart).
NOT_FOR_A_LOCAL_READ = NOT_FOR_A_LOCAL_ARCHIVE + ("archiver.pipeline", "archiver.chunking", "archiver.formats",
                                                  "archiver.filescache", "archiver.scan", "archiver.repair",
                                                  "archiver.replicate", "archiver.copies", "archiver.showpkg",
                                                  "importlib.metadata", "_strptime", "zipfile", "numpy")


@pytest.mark.parametrize("command", ["verify", "restore"])
def test_verify_and_restore_of_a_local_store_import_only_what_they_run(tmp_path, command):
    ckpt = make_checkpoint(tmp_path / "src" / "ckpt", layers=2, dim=64)
    env = {**os.environ, "ARCHIVER_HOME": str(tmp_path / "home")}
    store = str(tmp_path / "store")
    made = cli(env, "--store", store, "archive", str(ckpt), "--name", "m", "--json")
    assert made.returncode == 0, made.stderr
    mid = json.loads(made.stdout)["id"]
    args = ["verify", mid, "--deep"] if command == "verify" else ["restore", mid, str(tmp_path / "out")]
    r, loaded = cli_modules(env, "--store", store, *args, "--json")
    out = json.loads(r.stdout)
    if command == "verify":
        assert out["ok"] and out["files_hashed"] > 0 and out["event"]  # it read everything and logged its event
        assert out["bytes_read"] == sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
    else:
        assert tree(tmp_path / "out" / "ckpt") == tree(ckpt)
    ran = "archiver.checker" if command == "verify" else "archiver.restorer"  # (restore no longer loads the checker)
    assert ran in loaded and "archiver.stores.local" in loaded  # the probe saw the run's modules
    unwanted = [m for m in loaded if m in NOT_FOR_A_LOCAL_READ or m.split(".")[0] in NOT_FOR_A_LOCAL_READ]
    assert unwanted == []


def test_start_up_does_not_import_numpy():
    """numpy is imported by the first chunk's codec work, not by the command's imports: its
    import (~0.1 CPU-s) then overlaps the reading of the first chunks, and its BLAS threads
    are started after the entry point has set OPENBLAS_NUM_THREADS."""
    probe = "import sys\nimport archiver.cli, archiver.api, archiver.pipeline\nprint(sorted(m for m in sys.modules if m.split('.')[0] == 'numpy'))\n"
    r = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


@pytest.mark.packs
def test_an_archive_of_small_files_does_not_import_numpy(tmp_path):
    """Small files are one chunk each (no byte-planes) and the catalog records no file map for
    them: numpy's import (~0.06 CPU-s, on the committing thread after the last file) is not
    paid by a first archive of a tree of small files."""
    src = tmp_path / "src" / "tree"
    for i in range(40):
        (src / f"d{i % 4}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 4}" / f"f{i}.txt").write_bytes(os.urandom(100 + 50 * i))
    env = {**os.environ, "ARCHIVER_HOME": str(tmp_path / "home")}
    store = str(tmp_path / "store")
    r, loaded = cli_modules(env, "--store", store, "archive", str(src), "--name", "m", "--json")
    assert json.loads(r.stdout)["files"] == 40
    assert "archiver.pipeline" in loaded and [m for m in loaded if m.split(".")[0] == "numpy"] == []


def test_archive_start_up_imports_neither_zipfile_nor_the_profile_checker(tmp_path):
    """What archive imports before its first chunk is read runs on one thread (issue 12 item 6;
    bench/RESULTS.md, branch bigwall2): zipfile only for a torch zip (or by the event agent's
    version lookup, on its thread while chunks are written), the metadata profile checker only
    with --profile."""
    probe = ("import sys\nimport archiver.cli, archiver.api, archiver.pipeline, archiver.fanout, "
             "archiver.filescache, archiver.storecheck\n"
             "print(sorted(m for m in ('zipfile', 'archiver.profile') if m in sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
    ckpt = make_checkpoint(tmp_path / "src" / "ckpt", layers=2, dim=64)
    env = {**os.environ, "ARCHIVER_HOME": str(tmp_path / "home")}
    r, loaded = cli_modules(env, "--store", str(tmp_path / "store"), "archive", str(ckpt), "--name", "m", "--json")
    assert json.loads(r.stdout)["files"] > 0 and "archiver.pipeline" in loaded
    assert "archiver.profile" not in loaded


# The process's entry point with a non-daemon thread still working when the command returns
# and an exit handler.
_END_PROBE = ("import atexit, os, sys, threading\n"
              "from archiver.cli import main\n"
              "out, end = sys.argv[1], sys.argv[2] == 'end'\n"
              "def mark(name):\n"
              "    open(os.path.join(out, name), 'w').close()\n"
              "def late():\n"
              "    threading.Event().wait(0.3)  # still working when the command is done\n"
              "    mark('thread')\n"
              "threading.Thread(target=late).start()\n"
              "atexit.register(mark, 'atexit')\n"
              "sys.argv = ['archiver', *sys.argv[3:]]\n"
              "main(end_process=end)\n"
              "print('main returned')\n")


def _end_probe(tmp_path: Path, end: bool, *args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    out = tmp_path / ("end" if end else "returned")
    out.mkdir()
    r = subprocess.run([sys.executable, "-c", _END_PROBE, str(out), "end" if end else "return", *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "ARCHIVER_HOME": str(tmp_path / "home")})
    return r, {p.name for p in out.iterdir()}


def test_the_process_entry_point_ends_the_process_as_the_interpreter_would(tmp_path):
    """`main()` as the process's entry point ends the process once the command is done (the
    interpreter's teardown skipped), after what the interpreter's exit does first: non-daemon
    threads joined, exit handlers run, stdout flushed, the command's exit status;
    `main(end_process=False)` returns as before."""
    r, marks = _end_probe(tmp_path, True, "--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("archiver, version ") and "main returned" not in r.stdout
    assert marks == {"thread", "atexit"}
    r, marks = _end_probe(tmp_path, False, "--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("archiver, version ") and r.stdout.rstrip().endswith("main returned")
    assert marks == {"thread", "atexit"}


@pytest.mark.parametrize("args, status", [(["archive", "no-such-dir", "--name", "x", "--json"], 1),
                                          (["archive", "--no-such-option", "--json"], 2)])
def test_the_process_entry_point_keeps_a_failures_exit_status_and_json(tmp_path, args, status):
    """A command that fails ends the process with its exit status (1 for a file it cannot
    read, 2 for a usage error) and its one JSON document complete on stdout, exit handlers
    and threads done."""
    r, marks = _end_probe(tmp_path, True, "--store", str(tmp_path / "store"), *args)
    doc = json.loads(r.stdout)
    assert doc["ok"] is False and r.returncode == doc["exit_code"] == status
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("archiver: error: ")
    assert marks == {"thread", "atexit"}


_INTERRUPTED_AT_THE_END = {
    # while the threads are joined (what the interpreter's exit runs first, `threading._shutdown`)
    "joining threads": "threading._register_atexit(interrupted)\n"
                       "atexit.register(lambda: open(mark, 'w').close())\n",
    # while the exit handlers run (multiprocessing's joins its workers, Ray's shuts down): the
    # mark's handler, registered first, runs after the interrupted one
    "an exit handler": "atexit.register(lambda: open(mark, 'w').close())\n"
                       "atexit.register(interrupted)\n",
}


@pytest.mark.parametrize("where", sorted(_INTERRUPTED_AT_THE_END))
def test_the_process_entry_point_ends_a_ctrl_c_at_its_end_in_one_status(tmp_path, where):
    """A Ctrl-C while the entry point ends the process (joining the threads, or in an exit
    handler) ends it with status 130, no traceback, and the other exit handlers still run:
    the command's own output is already complete (the interpreter's own exit would print the
    traceback, and exit 0 for one in an exit handler)."""
    probe = ("import atexit, os, sys, threading\n"
             "from archiver.cli import main\n"
             "def interrupted():\n"
             "    raise KeyboardInterrupt\n"
             "mark = sys.argv[1]\n"
             + _INTERRUPTED_AT_THE_END[where] +
             "sys.argv = ['archiver', '--version']\n"
             "main()\n")
    mark = tmp_path / "atexit"
    r = subprocess.run([sys.executable, "-c", probe, str(mark)], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "ARCHIVER_HOME": str(tmp_path / "home")})
    assert r.returncode == 130 and r.stdout.startswith("archiver, version "), r.stderr
    assert "Traceback" not in r.stderr and "KeyboardInterrupt" not in r.stderr, r.stderr
    assert mark.exists()


@pytest.mark.parametrize("unbuffered", [False, True])
@pytest.mark.parametrize("args", [["list", "--json"], ["list"], ["--version"]])
def test_a_stdout_that_cannot_be_written_is_one_line_and_status_1(tmp_path, args, unbuffered):
    """stdout on a full disk (/dev/full: every write ENOSPC): one line on stderr, status 1,
    never a traceback, also with --json, whose error document cannot be written either; nor
    the interpreter's "Exception ignored" and status 120 for what stdout still held."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env.update(ARCHIVER_HOME=str(tmp_path / "home"), **({"PYTHONUNBUFFERED": "1"} if unbuffered else {}))
    ckpt = make_checkpoint(tmp_path / "src" / "ckpt", layers=1, dim=16)
    assert cli(env, "--store", str(tmp_path / "store"), "archive", str(ckpt), "--name", "m").returncode == 0
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "archiver.cli", "--store", str(tmp_path / "store"), *args], cwd=ROOT,
                           env=env, stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("archiver: error: ") and "No space left on device" in r.stderr

@pytest.mark.parametrize("args, status", [(["show", "nosuch", "--json"], 2), (["show", "nosuch"], 2),
                                          (["verify", "nosuch", "--json"], 2)])
def test_an_error_with_stdout_a_closed_pipe_is_one_line_and_its_status(tmp_path, args, status):
    """stdout a pipe whose reader is gone (`archiver ... --json | head` after head ended):
    the error's line on stderr and its own status; its JSON document, which cannot be
    written, neither raised with a traceback nor turned the status into another."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout buffered, as in a shell
    env["ARCHIVER_HOME"] = str(tmp_path / "home")
    ckpt = make_checkpoint(tmp_path / "src" / "ckpt", layers=1, dim=16)
    assert cli(env, "--store", str(tmp_path / "store"), "archive", str(ckpt), "--name", "m").returncode == 0
    read, write = os.pipe()
    os.close(read)
    try:
        r = subprocess.run([sys.executable, "-m", "archiver.cli", "--store", str(tmp_path / "store"), *args], cwd=ROOT,
                           env=env, stdout=write, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write)
    assert r.returncode == status and r.stderr == "archiver: error: no archive matches 'nosuch'\n", r.stderr


# A sitecustomize that writes a line through C's stdio: with stdout a pipe (and no
# PYTHONUNBUFFERED) it is written only by the C library's exit(), as the interpreter's own end
# calls it, never by the os._exit of a process ended at the entry point.
_C_STDIO_MARK = "import ctypes\nctypes.CDLL(None).printf(b'c-stdio\\n')\n"


def _run_under(tmp_path: Path, *launch: str) -> subprocess.CompletedProcess:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_C_STDIO_MARK)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env.update(ARCHIVER_HOME=str(tmp_path / "home"),
               PYTHONPATH=os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, *launch], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_python_m_ends_the_process_at_the_entry_point(tmp_path):
    """`python -m archiver.cli` and a console script end the process at the entry point (the
    interpreter's teardown skipped)."""
    script = tmp_path / "archiver-script"
    script.write_text("import sys\nfrom archiver.cli import main\nif __name__ == '__main__':\n    sys.exit(main())\n")
    for launch in (["-m", "archiver.cli", "--version"], [str(script), "--version"]):
        r = _run_under(tmp_path, *launch)
        assert r.returncode == 0 and r.stdout.startswith("archiver, version ") and r.stderr == "", (launch, r.stderr)
        assert "c-stdio" not in r.stdout  # ended at the entry point, not by the interpreter's exit


@pytest.mark.parametrize("runner", [["-m", "cProfile", "-o", "{prof}", "-m"],
                                    ["-m", "trace", "--count", "--coverdir", "{cover}", "--module"]])
def test_a_program_that_runs_the_cli_module_goes_on_after_it(tmp_path, runner):
    """`python -m cProfile -o P -m archiver.cli ...` (bench/prof_archive.py), `python -m trace`,
    pdb: the command runs inside another program, which writes its results once the module
    returns. The entry point leaves the end of the process to it (as `main(end_process=False)`)."""
    prof, cover = tmp_path / "p.prof", tmp_path / "cover"
    launch = [a.format(prof=prof, cover=cover) for a in runner]
    r = _run_under(tmp_path, *launch, "archiver.cli", "--version")
    assert r.returncode == 0 and r.stdout.startswith("archiver, version "), r.stderr
    if "cProfile" in launch:
        import pstats
        assert pstats.Stats(str(prof)).total_calls > 0
    else:
        assert any(cover.glob("*.cover"))
    assert "c-stdio" in r.stdout  # the interpreter's own end, after the profiler's or tracer's


def test_the_process_entry_point_ends_a_ctrl_c_while_flushing_stdout_in_one_status(tmp_path):
    """A Ctrl-C while the entry point writes out what stdout still holds (a reader that is
    slow to take it) ends the process with status 130 and no traceback, not with the
    command's status as if the output had all been written."""
    probe = ("import atexit, sys\n"
             "from archiver.cli import main\n"
             "class Stdout:\n"
             "    ending = False\n"
             "    def __init__(self, s): self.s = s\n"
             "    def __getattr__(self, name): return getattr(self.s, name)\n"
             "    def write(self, t): return self.s.write(t)\n"
             "    def flush(self):\n"
             "        if Stdout.ending:\n"
             "            Stdout.ending = False\n"
             "            raise KeyboardInterrupt  # as the flush waits for the reader\n"
             "        self.s.flush()\n"
             "sys.stdout = Stdout(sys.stdout)\n"
             "atexit.register(lambda: setattr(Stdout, 'ending', True))  # the exit handlers run before the flush\n"
             "sys.argv = ['archiver', '--version']\n"
             "main()\n")
    r = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "ARCHIVER_HOME": str(tmp_path / "home")})
    assert r.returncode == 130 and r.stdout.startswith("archiver, version "), r.stderr
    assert "Traceback" not in r.stderr and "KeyboardInterrupt" not in r.stderr, r.stderr
