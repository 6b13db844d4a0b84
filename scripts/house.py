#!/usr/bin/env python3
"""The house's sizes: production files over 800 lines and functions over 120.

Usage: python3 scripts/house.py [FOLDER...]   (default: src servers/src)

A file's production lines are those before its inline `#[cfg(test)] mod ...`
block; test files (`tests.rs`, `*_tests.rs`, `tests/` folders) are left out.
A function runs from its `fn` line to the closing brace at the same indent.
Import circles are checked by `tests/import_circles.rs`.
"""
import os
import re
import sys

FILE_LIMIT = 800
FUNCTION_LIMIT = 120


def production_lines(lines):
    for index, line in enumerate(lines):
        if line.startswith("#[cfg(test)]") and index + 1 < len(lines) and re.match(r"^mod \w+", lines[index + 1]):
            return index
    return len(lines)


def main(folders):
    long_files, long_functions = [], []
    for folder in folders:
        for directory, _, names in os.walk(folder):
            for name in names:
                path = os.path.join(directory, name)
                if not name.endswith(".rs") or "/tests/" in path or name == "tests.rs" or name.endswith("_tests.rs"):
                    continue
                lines = open(path, encoding="utf-8").read().split("\n")
                production = production_lines(lines)
                if production > FILE_LIMIT:
                    long_files.append((production, path))
                for index, line in enumerate(lines[:production]):
                    found = re.match(r"^(\s*)(pub(\([a-z:]+\))? )?(const )?(async )?fn (\w+)", line)
                    if not found:
                        continue
                    for end in range(index + 1, production):
                        if lines[end] == found.group(1) + "}":
                            if end - index + 1 > FUNCTION_LIMIT:
                                long_functions.append((end - index + 1, path, found.group(6)))
                            break
    print(f"files over {FILE_LIMIT} production lines: {len(long_files)}")
    for count, path in sorted(long_files, reverse=True):
        print(f"  {count:5} {path}")
    print(f"functions over {FUNCTION_LIMIT} lines: {len(long_functions)}")
    for count, path, name in sorted(long_functions, reverse=True):
        print(f"  {count:5} {path} {name}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["src", "servers/src"])
