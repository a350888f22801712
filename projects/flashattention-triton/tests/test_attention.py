"""Forward, lse and every gradient against the float32 reference: on the CPU through Triton's interpreter
at small shapes (tiles of 16, so short sequences still span many tiles), on the GPU at full shapes.

The criterion is FlashAttention's own: the kernel's error against float32 must stay within twice the
error of the naive computation done in the same low precision (plus a small floor)."""

import pytest
import torch
from flashattention_triton import attention, attention_with_lse, reference_attention

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"

# (B, H, H_kv, T_q, T_k, D)
CPU_SHAPES = [
    (1, 2, 2, 37, 37, 32),  # ragged length, several tiles
    (2, 4, 2, 33, 33, 64),  # GQA 2:1
    (1, 4, 1, 20, 45, 32),  # MQA, fewer queries than keys (a prefill chunk on a cache)
    (1, 2, 1, 45, 20, 32),  # more queries than keys: the first rows see nothing under the causal mask
    (1, 2, 2, 1, 40, 64),  # one decode step
    (1, 1, 1, 17, 17, 128),
    (1, 1, 1, 18, 18, 256),
]
GPU_SHAPES = [
    (2, 8, 2, 1000, 1000, 128),
    (1, 16, 16, 2048, 2048, 64),
    (2, 4, 1, 333, 1024, 128),
    (1, 2, 2, 1, 4096, 64),
    (1, 4, 4, 513, 513, 256),
    (1, 8, 8, 4099, 4099, 32),
    (1, 8, 2, 700, 300, 64),
]


def _inputs(B, H, H_kv, T_q, T_k, D, dtype, seed=0, device=DEVICE):
    g = torch.Generator().manual_seed(seed)

    def make(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype).requires_grad_()

    return make(B, H, T_q, D), make(B, H_kv, T_k, D), make(B, H_kv, T_k, D), make(B, H, T_q, D).detach()


def _check_against_reference(q, k, v, do, causal, scale=None):
    out, lse = attention_with_lse(q, k, v, causal=causal, scale=scale)
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref_in = [t.detach().float().requires_grad_() for t in (q, k, v)]
    ref_out, ref_lse = reference_attention(*ref_in, causal=causal, scale=scale)
    ref_grads = torch.autograd.grad(ref_out, ref_in, do.float())
    low_in = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    low_out, _ = reference_attention(*low_in, causal=causal, scale=scale)
    low_grads = torch.autograd.grad(low_out, low_in, do)
    for name, got, ref, low in zip(
        ("out", "dq", "dk", "dv"), (out, *grads), (ref_out, *ref_grads), (low_out, *low_grads), strict=True
    ):
        assert got.shape == ref.shape and got.dtype == q.dtype, name
        err, low_err = (got.float() - ref).abs().max().item(), (low.float() - ref).abs().max().item()
        assert err <= 2 * low_err + 1e-3, f"{name}: error {err:.3e}, naive {q.dtype} error {low_err:.3e}"
    finite = ref_lse.isfinite()
    assert torch.equal(lse.isinf(), ref_lse.isinf())
    torch.testing.assert_close(lse[finite], ref_lse[finite], atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", CPU_SHAPES, ids=str)
def test_matches_reference_small(shape, causal):
    q, k, v, do = _inputs(*shape, torch.float16, seed=sum(shape))
    _check_against_reference(q, k, v, do, causal)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=str)
def test_matches_reference_gpu(shape, causal, dtype):
    q, k, v, do = _inputs(*shape, dtype, seed=sum(shape))
    _check_against_reference(q, k, v, do, causal)


def test_custom_scale():
    q, k, v, do = _inputs(1, 2, 1, 24, 40, 64, torch.float16, seed=7)
    _check_against_reference(q, k, v, do, causal=True, scale=0.3)


def test_rows_that_see_no_key_give_zero_and_finite_gradients():
    q, k, v, do = _inputs(1, 2, 2, 40, 16, 32, torch.float16, seed=3)
    out, lse = attention_with_lse(q, k, v, causal=True)
    blind = 40 - 16  # query i sees keys j <= i - 24
    assert torch.all(out[:, :, :blind] == 0) and torch.all(lse[:, :, :blind] == float("inf"))
    for g in torch.autograd.grad(out, (q, k, v), do):
        assert torch.isfinite(g).all()


def test_non_contiguous_inputs_match_contiguous():
    # the shared model's layout: (B, T, H, D) projections viewed as (B, H, T, D)
    x = torch.randn(2, 40, 3 * 4, 32, dtype=torch.float16, device=DEVICE)
    q, k, v = (t.transpose(1, 2) for t in x.split(4, dim=2))
    assert not q.is_contiguous()
    torch.testing.assert_close(attention(q, k, v, causal=True), attention(*(t.contiguous() for t in (q, k, v)),
                               causal=True))  # fmt: skip
    strided = torch.randn(1, 2, 20, 64, device=DEVICE).to(torch.float16)[..., ::2]  # head_dim stride 2
    torch.testing.assert_close(attention(strided, strided, strided), attention(*[strided.contiguous()] * 3))


def test_empty_sequence():
    q, k, v, do = _inputs(1, 2, 2, 0, 16, 32, torch.float16)
    out = attention(q, k, v)
    assert out.shape == (1, 2, 0, 32)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), do)
    assert dq.shape == q.shape and torch.all(dk == 0) and torch.all(dv == 0)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(dtype=torch.float32), "float16 or bfloat16"),
        (dict(D=48), "head_dim 48 is not supported"),
        (dict(H=3, H_kv=2), "not a multiple"),
        (dict(v_T=7), "k and v shapes differ"),
        (dict(k_B=2), "does not match q"),
        (dict(mixed=True), "share a dtype"),
        (dict(rank=3), "must be 4-D"),
    ],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_bad_inputs_name_the_problem(change, message):
    dtype, D, H, H_kv = (
        change.get("dtype", torch.float16),
        change.get("D", 32),
        change.get("H", 2),
        change.get("H_kv", 1),
    )
    q = torch.randn(1, H, 8, D, device=DEVICE).to(dtype)
    k = torch.randn(change.get("k_B", 1), H_kv, 8, D, device=DEVICE).to(dtype)
    v = torch.randn(change.get("k_B", 1), H_kv, change.get("v_T", 8), D, device=DEVICE).to(dtype)
    if change.get("mixed"):
        v = v.to(torch.bfloat16)
    if change.get("rank"):
        q = q[0]
    with pytest.raises(ValueError, match=message):
        attention(q, k, v)


def test_bad_scale():
    q = torch.randn(1, 1, 8, 32, dtype=torch.float16, device=DEVICE)
    with pytest.raises(ValueError, match="scale must be a positive finite number"):
        attention(q, q, q, scale=float("nan"))


def test_cpu_tensors_outside_the_interpreter_are_refused(monkeypatch):
    from flashattention_triton import ops

    monkeypatch.setattr(ops, "interpreting", lambda: False)
    q = torch.randn(1, 1, 8, 32, dtype=torch.float16)
    with pytest.raises(ValueError, match="need CUDA tensors"):
        attention(q, q, q)


def test_library_ops_pass_opcheck():
    q, k, v, do = _inputs(1, 2, 1, 20, 20, 32, torch.float16)
    q, k, v = q.detach(), k.detach(), v.detach()
    ops = torch.ops.flashattention_triton
    torch.library.opcheck(ops.attention_forward.default, (q, k, v, True, 0.2))
    out, lse = ops.attention_forward(q, k, v, True, 0.2)
    torch.library.opcheck(ops.attention_backward.default, (do, q, k, v, out, lse, True, 0.2))


def test_compiles_without_graph_breaks():
    q, k, v, do = _inputs(2, 4, 2, 24, 24, 32, torch.float16, seed=5)

    def layer(q, k, v):
        return attention(q * 1.5, k, v, causal=True).float().square().sum()

    backend = "inductor" if GPU else "aot_eager"  # no C++ toolchain assumptions on the CPU runner
    compiled = torch.compile(layer, fullgraph=True, backend=backend)
    got = compiled(q, k, v)
    got_grads = torch.autograd.grad(got, (q, k, v))
    ref = layer(q, k, v)
    ref_grads = torch.autograd.grad(ref, (q, k, v))
    torch.testing.assert_close(got, ref)
    for a, b in zip(got_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.gpu
def test_compiled_kernels_use_hopper_wgmma():
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("wgmma is a Hopper (sm_90) instruction")
    from flashattention_triton.kernels import backward, forward

    q, k, v, do = (t.detach() for t in _inputs(1, 4, 4, 512, 512, 128, torch.bfloat16))
    o, lse = forward.attention_forward(q, k, v, False, 0.1)
    compiled = {"forward": forward.launch_forward(q, k, v, o, lse, False, 0.1)}
    grads = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    compiled.update(backward.launch_backward(do, q, k, v, o, lse, torch.empty_like(lse), *grads, False, 0.1))
    for name in ("forward", "dkdv", "dq"):
        assert "wgmma.mma_async" in compiled[name].asm["ptx"], f"{name} kernel does not use wgmma"
