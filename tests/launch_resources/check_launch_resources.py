#!/usr/bin/env python3
"""Checks, before any GPU runs them, that every CUDA kernel of the project can be
launched as the code launches it: what the CPU emulation cannot see.

Each kernel .cu file (every one in the tree outside tests/ and build folders,
or the files named on the command line) is compiled for sm_90 with
`nvcc -c -Xptxas -v`, and for every kernel (`.entry` of the PTX):
- it must carry `__launch_bounds__(N)` (the PTX's `.maxntid`): N is the most
  threads a block of it is launched with;
- registers per thread (rounded up to the allocation unit of 8) times N
  (rounded up to whole warps) must fit the register file of an SM (65536 32-bit
  registers on sm_90), else the launch fails with "too many resources
  requested for launch";
- its static shared memory must be at most 48 KB (more needs the opt-in
  attribute and dynamic shared memory, which no kernel here uses).
And in the source, every CUDA_LAUNCH_KERNEL must pass as its block the
expression named in the kernel's `__launch_bounds__` (a `dim3(A, B)` block
matches a bound `A * B`), and every kernel launched by CUDA_LAUNCH_ELEMENTWISE
must be bounded by CUDA_ELEMENTWISE_THREADS: a launch with more threads than the
bound fails on the GPU.

usage: check_launch_resources.py [--nvcc NVCC] [--arch sm_90]
           [--registers-per-sm 65536] SOURCE_DIR [FILE.cu ...]
Prints one line per kernel and one line per problem (FILE: KERNEL: what);
exits 1 when there is a problem, 2 when a file does not compile.
"""
import argparse
import concurrent.futures
import os
import re
import subprocess
import sys
import tempfile

SHARED_LIMIT = 48 * 1024
REGISTER_UNIT = 8  # registers are allocated per thread in multiples of 8 (per warp: 256)
WARP = 32


def kernel_sources(source_dir):
    found = []
    for root, dirs, files in os.walk(source_dir):
        rel = os.path.relpath(root, source_dir)
        top = rel.split(os.sep)[0]
        if rel != "." and (top == "tests" or top.startswith("build") or top.startswith(".")):
            dirs[:] = []
            continue
        found += [os.path.join(root, f) for f in files if f.endswith(".cu")]
    return sorted(found)


def include_dirs(source_dir):
    dirs = set()
    for root, subdirs, files in os.walk(source_dir):
        rel = os.path.relpath(root, source_dir)
        top = rel.split(os.sep)[0]
        if rel != "." and (top == "tests" or top.startswith("build") or top.startswith(".")):
            subdirs[:] = []
            continue
        if any(f.endswith((".h", ".cuh")) for f in files):
            dirs.add(root)
    return sorted(dirs)


def demangle(names):
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
        plain = out.splitlines()
        if len(plain) == len(names):
            return dict(zip(names, plain))
    except (OSError, subprocess.CalledProcessError):
        pass
    return {n: n for n in names}


def compile_file(path, args, includes):
    """Returns (ptx text, ptxas -v output) or raises RuntimeError with nvcc's output."""
    with tempfile.TemporaryDirectory() as keep:
        cmd = [args.nvcc, "-arch=" + args.arch, "-c", "-Xptxas", "-v", "--keep", "--keep-dir", keep,
               "-DLDM_HAVE_CUDA=1", "-o", os.path.join(keep, "out.o"), path]
        cmd[1:1] = ["-I" + d for d in includes]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(done.stdout + done.stderr)
        ptx = ""
        for f in os.listdir(keep):
            if f.endswith(".ptx"):
                with open(os.path.join(keep, f)) as h:
                    ptx += h.read()
        return ptx, done.stdout + done.stderr


def parse_ptx_bounds(ptx):
    """{mangled kernel: maxntid product or None}"""
    bounds = {}
    for m in re.finditer(r"\.entry\s+(\w+)\s*\((.*?)\)(.*?)\{", ptx, re.S):
        name, directives = m.group(1), m.group(3)
        nt = re.search(r"\.maxntid\s+(\d+)(?:\s*,\s*(\d+))?(?:\s*,\s*(\d+))?", directives)
        if nt:
            product = 1
            for g in nt.groups():
                if g:
                    product *= int(g)
            bounds[name] = product
        else:
            bounds[name] = None
    return bounds


def parse_ptxas(text):
    """{mangled kernel: (registers, static shared bytes, spill store bytes)}"""
    usage, current, spills = {}, None, 0
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            current, spills = m.group(1), 0
            continue
        m = re.search(r"(\d+) bytes spill stores", line)
        if m and current:
            spills = int(m.group(1))
        m = re.search(r"Used (\d+) registers", line)
        if m and current:
            smem = re.search(r"(\d+) bytes smem", line)
            usage[current] = (int(m.group(1)), int(smem.group(1)) if smem else 0, spills)
            current = None
    return usage


def strip_comments(text):
    """The source without comments, each comment replaced by its newlines (line numbers kept)."""
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n") or " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def split_arguments(text, start):
    """(the comma-separated arguments of the parenthesis opened at text[start],
    the index just after its closing parenthesis)."""
    depth, args, current = 0, [], ""
    for i in range(start, len(text)):
        ch = text[i]
        if ch in "([{":
            depth += 1
            if depth == 1:
                continue
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                args.append(current.strip())
                return [a for a in args if a], i + 1
        elif ch == "," and depth == 1:
            args.append(current.strip())
            current = ""
            continue
        current += ch
    return args, len(text)


def normalise(expr):
    expr = " ".join(expr.split())
    m = re.fullmatch(r"dim3\s*\((.*)\)", expr)
    if m:
        expr = " * ".join(a.strip() for a in m.group(1).split(","))
    return expr.replace("(", "").replace(")", "").replace(" ", "")


def check_launch_sites(path, rel):
    """Source-level checks: the bound of each kernel and the block of each launch."""
    problems = []
    text = strip_comments(open(path).read())
    bounds = {}
    for m in re.finditer(r"__global__\b[^;{(]*?\b(\w+)\s*\(", text):
        name = m.group(1)
        if name == "__launch_bounds__":  # __launch_bounds__(N) comes before the kernel's name
            bound, end = split_arguments(text, m.end() - 1)
            after = re.match(r"\s*(\w+)\s*\(", text[end:])
            if after:
                bounds[after.group(1)] = bound[0] if bound else ""
        else:
            line = text.count("\n", 0, m.start()) + 1
            problems.append(f"{rel}:{line}: {name}: no __launch_bounds__ (every __global__ kernel needs one: "
                            "the most threads a block of it is launched with)")
    for m in re.finditer(r"\bCUDA_LAUNCH_(KERNEL|ELEMENTWISE)\s*\(", text):
        if text[m.start() - 8:m.start()].endswith("define "):
            continue
        args, _ = split_arguments(text, m.end() - 1)
        if not args:
            continue
        kernel = re.sub(r"<.*>", "", args[0]).strip("() \t\n")  # (kernel<A, B>) -> kernel
        line = text.count("\n", 0, m.start()) + 1
        if kernel not in bounds:
            continue  # a kernel of another file, or one already reported without a bound
        if m.group(1) == "ELEMENTWISE":
            block = "CUDA_ELEMENTWISE_THREADS"
        elif len(args) >= 3:
            block = args[2]
        else:
            continue
        declared = re.search(r"\bdim3\s+" + re.escape(block) + r"\s*\(([^()]*)\)", text)
        if declared:  # const dim3 block(A, B); ... launch(kernel, grid, block, ...)
            block = f"dim3({declared.group(1)})"
        if normalise(block) != normalise(bounds[kernel]):
            problems.append(f"{rel}:{line}: {kernel}: launched with block {block} but bounded by "
                            f"__launch_bounds__({bounds[kernel]}): launch it with the constant of its bound")
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nvcc", default="nvcc")
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--registers-per-sm", type=int, default=65536)
    parser.add_argument("source_dir")
    parser.add_argument("files", nargs="*")
    args = parser.parse_args()
    source_dir = os.path.abspath(args.source_dir)
    files = [os.path.abspath(f) for f in args.files] or kernel_sources(source_dir)
    if not files:
        print(f"check_launch_resources: no .cu files under {source_dir}")
        return 2
    includes = include_dirs(source_dir)
    problems, broken = [], []
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        compiled = {f: pool.submit(compile_file, f, args, includes) for f in files}
        for f in files:
            rel = os.path.relpath(f, source_dir)
            problems += check_launch_sites(f, rel)
            try:
                ptx, ptxas = compiled[f].result()
            except RuntimeError as e:
                broken.append(f"{rel}: nvcc failed:\n{e}")
                continue
            bounds, usage = parse_ptx_bounds(ptx), parse_ptxas(ptxas)
            names = demangle(sorted(bounds))
            for mangled in sorted(bounds):
                name, threads = names[mangled], bounds[mangled]
                registers, shared, spills = usage.get(mangled, (None, None, None))
                if registers is None:
                    problems.append(f"{rel}: {name}: no ptxas resource line (compiled with -Xptxas -v?)")
                    continue
                if threads is None:
                    problems.append(f"{rel}: {name}: no __launch_bounds__ (.maxntid): cannot tell its block size")
                    print(f"{rel}: {name}: {registers} registers, {shared} bytes static shared, no bound")
                    continue
                allocated = -(-registers // REGISTER_UNIT) * REGISTER_UNIT * (-(-threads // WARP) * WARP)
                print(f"{rel}: {name}: {threads} threads x {registers} registers = {allocated} of "
                      f"{args.registers_per_sm}, {shared} bytes static shared"
                      + (f", {spills} bytes spilled" if spills else ""))
                if allocated > args.registers_per_sm:
                    problems.append(f"{rel}: {name}: {threads} threads x {registers} registers (allocated {allocated}) "
                                    f"exceed the {args.registers_per_sm} registers of an SM")
                if shared > SHARED_LIMIT:
                    problems.append(f"{rel}: {name}: {shared} bytes of static shared memory exceed {SHARED_LIMIT} "
                                    "(more needs the opt-in attribute and dynamic shared memory)")
    for p in problems:
        print("PROBLEM " + p)
    for b in broken:
        print("BROKEN " + b)
    if broken:
        return 2
    if problems:
        return 1
    print(f"check_launch_resources: {len(files)} files, every kernel fits ({args.arch})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
