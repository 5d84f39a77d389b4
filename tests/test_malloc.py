"""malloc.tune: glibc accepts the settings, and looking mallopt up costs no start-up time."""
from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from archiver import malloc


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt settings are glibc's")
def test_glibc_accepts_the_settings():
    assert malloc.tune() is True


def test_tune_imports_no_subprocess_or_ctypes_util():
    # ctypes.util.find_library imports subprocess and may run ldconfig: every command pays it
    probe = ("import json, sys\nfrom archiver import malloc\nok = malloc.tune()\n"
             "print(json.dumps([ok, 'ctypes.util' in sys.modules, 'subprocess' in sys.modules]))")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    ok, util, sub = json.loads(r.stdout)
    assert (util, sub) == (False, False)
    assert ok is (platform.libc_ver()[0] == "glibc")
