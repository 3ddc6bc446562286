"""Build the compiled datapath (``rawtransport._datapath``) with the machine's C compiler.

Everything else about the package is in pyproject.toml. The extension is optional: where it cannot
be built (no compiler, no Python headers) the install goes on and the package runs its pure-Python
datapath, saying so (``rawtransport.datapath``). ``RAWTRANSPORT_SANITIZE=1`` builds it with
AddressSanitizer and UndefinedBehaviorSanitizer (``.ci/run`` does, to run the fuzz tests under them).
"""

import os

from setuptools import Extension, setup

CFLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror"]
LDFLAGS: list[str] = []
if os.environ.get("RAWTRANSPORT_SANITIZE") == "1":
    SAN = [
        "-fsanitize=address,undefined",
        "-fno-sanitize-recover=undefined",
        "-fno-omit-frame-pointer",
    ]
    CFLAGS = [*CFLAGS[:1], "-O1", "-g", *CFLAGS[2:], *SAN]
    LDFLAGS = SAN

setup(
    ext_modules=[
        Extension(
            "rawtransport._datapath",
            sources=["rawtransport/_datapath.c", "rawtransport/_deliver.c", "rawtransport/_send.c"],
            depends=["rawtransport/_datapath.h"],
            extra_compile_args=CFLAGS,
            extra_link_args=LDFLAGS,
            # Without a compiler the install still succeeds; the pure path runs and says so.
            optional=os.environ.get("RAWTRANSPORT_REQUIRE_C") != "1",
        )
    ]
)
