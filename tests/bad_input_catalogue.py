#!/usr/bin/env python3
"""Prints the catalogue of bad-input tests for docs/testing.md: every ctest
that runs tests/expect_error.sh (the command must exit with the given status
and print one line matching the pattern), and every case of
tests/bad_input_scenarios.sh, grouped by what is bad, with the line the user
gets (the pattern the test checks, as written) and the number of ranks.

Usage: bad_input_catalogue.py BUILD_DIR   (a configured build: ctest lists its tests)"""
import json, os, re, subprocess, sys

build = sys.argv[1]
here = os.path.dirname(os.path.abspath(__file__))
listing = json.loads(subprocess.run(["ctest", "--show-only=json-v1"], cwd=build, check=True,
                                    capture_output=True, text=True).stdout)

rows = []  # (category, test, ranks, status, pattern)


def category(name, pattern, command):
    text = name + " " + pattern
    if re.search(r"config|--set |[.]json", text) and "manifest" not in text:
        return "Configs and --set"
    if re.search(r"cli_data_|_data_|missing_data|[.]h5: (/|attribute|both|not an|no data|cannot read the data)", text):
        return "Data set files"
    if re.search(r"fmnist|png|image_dir|empty_dir|images_no_dir", name):
        return "Source files of prepare (idx, PNG folders)"
    if re.search(r"checkpoint|step-|manifest|kind|autoencoder|teacher|/run|inspect|the model|student|resume|a-file|"
                 r"safetensors|consistency", text):
        return "Checkpoints, runs and weights"
    return "Flags and commands"


for test in listing["tests"]:
    command = test.get("command") or []
    at = [i for i, word in enumerate(command) if word.endswith("expect_error.sh")]
    if not at:
        continue
    i = at[0]
    status, pattern, rest = command[i + 1], command[i + 2], command[i + 4:]
    ranks = 1
    if "-np" in rest:
        ranks = int(rest[rest.index("-np") + 1])
    rows.append((category(test["name"], pattern, rest), test["name"], ranks, status, pattern))

# The cases of tests/bad_input_scenarios.sh: each `case)` with its `expect "PATTERN"`.
script = open(os.path.join(here, "bad_input_scenarios.sh")).read()
for name, pattern in re.findall(r'^([a-z-]+)\)\n\s+expect "((?:[^"\\]|\\.)*)"', script, re.M):
    test = "cli_bad_input_" + name.replace("-", "_")
    rows.append((category(test, pattern, []), test, 2, "2", pattern.replace('\\"', '"')))

order = ["Flags and commands", "Configs and --set", "Data set files", "Source files of prepare (idx, PNG folders)",
         "Checkpoints, runs and weights"]
print(f"{len(rows)} tests, {sum(1 for r in rows if r[3] == '2')} of them exit status 2, "
      f"{sum(1 for r in rows if r[2] > 1)} on several ranks.\n")
for group in order:
    chosen = [r for r in rows if r[0] == group]
    if not chosen:
        continue
    print(f"#### {group} ({len(chosen)})\n")
    print("| test | ranks | exit | the line (as the test matches it) |")
    print("|---|---|---|---|")
    for _, name, ranks, status, pattern in chosen:
        shown = pattern.replace("|", "\\|")
        print(f"| `{name}` | {ranks} | {status} | `{shown}` |")
    print()
