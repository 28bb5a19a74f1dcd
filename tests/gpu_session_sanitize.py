#!/usr/bin/env python3
"""Reruns ctest tests under compute-sanitizer (memcheck), for tests/gpu_session.sh
after a group of GPU tests failed: a kernel that reads out of bounds or a copy
of uninitialised memory is named there, where the test itself only saw wrong
numbers.

usage: gpu_session_sanitize.py BUILD SANITIZER OUT_PREFIX TEST...

Each test's command and environment come from `ctest --show-only=json-v1`. A C
test runs as SANITIZER ... COMMAND; a script test (cli_*, which runs the
programs named by LDM and LDM_POISONED) gets wrappers in their place that run
those programs under the sanitizer. Output: OUT_PREFIX-TEST.log each. Exit
status: 0 when every test passed under it, else 1. The caller's timeout ends it."""
import json
import os
import stat
import subprocess
import sys

SANITIZER_ARGS = ["--tool", "memcheck", "--error-exitcode", "99", "--print-limit", "20",
                  "--target-processes", "all"]


def ctest_tests(build):
    text = subprocess.run(["ctest", "--show-only=json-v1"], cwd=build, check=True,
                          capture_output=True, text=True).stdout
    return {t["name"]: t for t in json.loads(text)["tests"]}


def wrapper(path, sanitizer, program):
    with open(path, "w") as f:
        f.write("#!/bin/sh\nexec %s %s %s \"$@\"\n" % (sanitizer, " ".join(SANITIZER_ARGS), program))
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    return path


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    build, sanitizer, prefix, names = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    tests = ctest_tests(build)
    failed = 0
    for name in names:
        test = tests.get(name)
        if test is None:
            print(f"{name}: not a test of {build}")
            failed += 1
            continue
        props = {p["name"]: p["value"] for p in test.get("properties", [])}
        env = dict(os.environ)
        for item in props.get("ENVIRONMENT", []):
            key, _, value = item.partition("=")
            env[key] = value
        command = list(test["command"])
        wrapped = False
        for key in ("LDM", "LDM_POISONED"):
            if key in env:
                env[key] = wrapper(f"{prefix}-{name}-{key}.sh", sanitizer, env[key])
                wrapped = True
        if not wrapped:
            command = [sanitizer] + SANITIZER_ARGS + command
        log = f"{prefix}-{name}.log"
        with open(log, "w") as f:
            f.write("+ " + " ".join(command) + "\n")
            f.flush()
            status = subprocess.run(command, cwd=props.get("WORKING_DIRECTORY", build), env=env,
                                    stdout=f, stderr=subprocess.STDOUT).returncode
        with open(log) as f:
            errors = [line.rstrip() for line in f if "=========" in line][:40]
        print(f"{name}: exit status {status} under compute-sanitizer ({log})")
        for line in errors:
            print("  " + line)
        failed += status != 0
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
