"""run_torchrun.py — runs a script under torch.distributed.run on this machine, for ctest:
    run_torchrun.py NPROC SCRIPT [ARGS...]
on a free port (torchrun's --standalone always takes port 29400, which two tests running at once
would share), with every worker's output on the console. Exits with torchrun's status.

Debian's torch 1.13 under Python 3.11 cannot parse torchrun's default --redirects/--tee value
"0" (Std.from_str finds no member for 0: Python 3.11 no longer iterates a zero-valued IntFlag
member), so both are given as "1" (stdout to a log file and, teed, to the console).
"""
import socket
import subprocess
import sys


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: run_torchrun.py NPROC SCRIPT [ARGS...]")
    nproc, script, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node",
           nproc, "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           "--redirects", "1", "--tee", "1", script, *args]
    print(" ".join(cmd), flush=True)
    sys.exit(subprocess.call(cmd))


if __name__ == "__main__":
    main()
