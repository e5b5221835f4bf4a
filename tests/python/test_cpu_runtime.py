# test_cpu_runtime.py — hybridmoe.configure_cpu: the thread layout it reports is the one torch and
# OpenBLAS run with, large freed buffers are reused (same memory, counted), and an MoE layer's
# output and gradients on several threads with the cache equal those on one thread without it
# (float64, 1e-12). Each test runs in a fresh interpreter (the cache is process-wide).
import subprocess
import sys
import textwrap

SCRIPT_HEAD = textwrap.dedent("""
    import torch
    import hybridmoe
""")


def run(body):
    code = SCRIPT_HEAD + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_threads_and_cache_are_in_force():
    run("""
        assert not hybridmoe.cpu_buffer_cache_stats()["installed"]
        got = hybridmoe.configure_cpu(threads=2, max_cached_bytes=64 << 20)
        assert got["intra_op_threads"] == 2 and torch.get_num_threads() == 2, got
        if got["blas_controllable"]:
            assert got["blas_threads"] == 1 and "single-threaded" in got["description"], got
        assert got["buffer_cache"] and hybridmoe.cpu_buffer_cache_stats()["installed"]
        t = torch.ones(1 << 20)  # 4 MiB
        first = t.data_ptr()
        del t
        before = hybridmoe.cpu_buffer_cache_stats()
        assert before["cached_bytes"] == 4 << 20, before
        u = torch.empty(1 << 20)
        after = hybridmoe.cpu_buffer_cache_stats()
        assert u.data_ptr() == first and after["reused"] == before["reused"] + 1, after
    """)


def test_refusals_name_the_value():
    out = run("""
        for kw, needle in [(dict(threads=0), "got 0"), (dict(max_cached_bytes=-1), "got -1")]:
            try:
                hybridmoe.configure_cpu(**kw)
            except hybridmoe.Error as e:
                assert needle in str(e), str(e)
                print("refused", kw)
            else:
                raise AssertionError(f"configure_cpu({kw}) was accepted")
    """)
    assert out.count("refused") == 2


def test_moe_on_two_threads_with_the_cache_equals_one_thread():
    run("""
        def step(threads, cache):
            if cache:
                hybridmoe.configure_cpu(threads=threads)
            else:
                torch.set_num_threads(threads)
            torch.manual_seed(0)
            moe = hybridmoe.MoE(d_model=64, num_experts=8, top_k=2, d_hidden=512).double()
            x = torch.randn(1024, 64, dtype=torch.float64, requires_grad=True)
            out, aux, _ = moe(x)
            (out.square().sum() + aux).backward()
            return [out.detach(), x.grad] + [p.grad for p in moe.parameters()]
        want = step(1, cache=False)
        got = step(2, cache=True)
        for g, w in zip(got, want):
            assert torch.allclose(g, w, rtol=1e-12, atol=1e-12), (g - w).abs().max()
        print("ok")
    """)
