"""Run one command and report its wall time and peak RSS as JSON.

Usage: python -I -S bench/rsswrap.py RESULT.json STDOUT STDERR -- CMD ARG...

Why a separate, small process: Linux carries the parent's peak RSS into a child's
ru_maxrss across exec (vfork/posix_spawn share the parent's mm, and exec records its
high-water mark), so a command spawned straight from the benchmark process (which holds
numpy and friends) would report the benchmark's RSS. This wrapper imports only `os`,
`sys`, `time` and `json` (a few MiB), spawns the command, and reads the command's own
rusage with os.wait4: ru_maxrss is the largest RSS of the command or any descendant it
waited for (the kernel folds children's maxima in), i.e. the peak of the process tree's
largest member. The floor of this method (what `true` reports) is printed by run.py."""
import json
import os
import sys
import time


def main() -> int:
    args = sys.argv[1:]
    if len(args) < 5 or args[3] != "--":
        sys.stderr.write(__doc__)
        return 2
    result, out, err, cmd = args[0], args[1], args[2], args[4:]
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, out, flags, 0o644),
        (os.POSIX_SPAWN_OPEN, 2, err, flags, 0o644),
    ]
    t0 = time.perf_counter()
    try:
        pid = os.posix_spawnp(cmd[0], cmd, os.environ, file_actions=actions)
    except OSError as e:
        with open(result, "w") as f:
            json.dump({"rc": 127, "wall": 0.0, "maxrss_kib": 0, "error": str(e)}, f)
        return 0
    _, status, ru = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    with open(result, "w") as f:
        json.dump({"rc": rc, "wall": wall, "maxrss_kib": ru.ru_maxrss, "utime": ru.ru_utime,
                   "stime": ru.ru_stime}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
