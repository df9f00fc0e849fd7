"""compose.similarity against dense fp64 math, and the laws a similarity obeys."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compose import similarity as sim
from compose.merge import Factors
from compose.similarity import Dense


def _lora(d, k, r, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return Factors(
        A=torch.randn(r, k, generator=g, dtype=torch.float64),
        B=scale * torch.randn(d, r, generator=g, dtype=torch.float64),
    )


def _dense(f):
    return f.B.double() @ f.A.double()


def _dense_cos(x, y):
    return float((x * y).sum() / (x.norm() * y.norm()))


def _invertible(r, seed):
    g = torch.Generator().manual_seed(seed)
    # Well conditioned: identity plus a small perturbation, then a random positive scale per row.
    return (torch.eye(r, dtype=torch.float64) + 0.3 * torch.randn(r, r, generator=g)) * (
        0.5 + torch.rand(r, 1, generator=g, dtype=torch.float64)
    )


shapes = st.tuples(
    st.integers(4, 40), st.integers(4, 40), st.integers(1, 6), st.integers(1, 6), st.integers(0, 99)
)


@settings(max_examples=60, deadline=None)
@given(shapes)
def test_low_rank_equals_dense(shape):
    d, k, r1, r2, seed = shape
    u, v = _lora(d, k, r1, seed), _lora(d, k, r2, seed + 1000)
    du, dv = _dense(u), _dense(v)
    assert sim.inner(u, v) == pytest.approx(float((du * dv).sum()), rel=1e-9, abs=1e-9)
    assert sim.cosine(u, v) == pytest.approx(_dense_cos(du, dv), abs=1e-10)
    # A factored update against a dense one (LoHa/LoKr/OFT) agrees with the dense form too.
    assert sim.cosine(u, Dense(dv)) == pytest.approx(_dense_cos(du, dv), abs=1e-10)
    expected = float((du - dv).norm() / (du.norm() + dv.norm()))
    assert sim.relative_distance(u, v) == pytest.approx(expected, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(shapes)
def test_invariant_under_refactoring(shape):
    """B -> B R, A -> R^-1 A leaves the delta, so every measure, unchanged."""
    d, k, r1, r2, seed = shape
    u, v = _lora(d, k, r1, seed), _lora(d, k, r2, seed + 1000)
    rot = _invertible(r1, seed)
    u2 = Factors(A=torch.linalg.solve(rot, u.A), B=u.B @ rot)
    assert sim.cosine(u2, v) == pytest.approx(sim.cosine(u, v), abs=1e-9)
    assert sim.relative_distance(u2, v) == pytest.approx(sim.relative_distance(u, v), abs=1e-9)
    before, after = sim.principal_angles(u, v), sim.principal_angles(u2, v)
    assert after.columns == pytest.approx(before.columns, abs=1e-6)
    assert after.rows == pytest.approx(before.rows, abs=1e-6)
    assert sim.spectrum(u2).singular_values == pytest.approx(
        sim.spectrum(u).singular_values, rel=1e-9
    )


@settings(max_examples=40, deadline=None)
@given(shapes)
def test_symmetry_and_identity(shape):
    d, k, r1, r2, seed = shape
    u, v = _lora(d, k, r1, seed), _lora(d, k, r2, seed + 1000)
    assert sim.cosine(u, v) == pytest.approx(sim.cosine(v, u), abs=1e-12)
    assert sim.relative_distance(u, v) == pytest.approx(sim.relative_distance(v, u), abs=1e-12)
    assert sim.cosine(u, u) == pytest.approx(1.0, abs=1e-12)
    assert sim.relative_distance(u, u) == pytest.approx(0.0, abs=1e-6)
    negated = Factors(A=u.A, B=-2.0 * u.B)
    assert sim.cosine(u, negated) == pytest.approx(-1.0, abs=1e-12)
    assert sim.relative_distance(u, negated) == pytest.approx(1.0, abs=1e-9)
    assert all(a == pytest.approx(0.0, abs=1e-6) for a in sim.principal_angles(u, u).columns)


def test_principal_angles_match_dense_svd():
    u, v = _lora(30, 20, 3, 1), _lora(30, 20, 5, 2)
    got = sim.principal_angles(u, v)

    def dense_angles(x, y):
        qx = torch.linalg.svd(x, full_matrices=False)[0][:, : torch.linalg.matrix_rank(x)]
        qy = torch.linalg.svd(y, full_matrices=False)[0][:, : torch.linalg.matrix_rank(y)]
        return [float(a) for a in torch.arccos(torch.linalg.svdvals(qx.T @ qy).clamp(-1, 1))]

    du, dv = _dense(u), _dense(v)
    assert got.columns == pytest.approx(dense_angles(du, dv), abs=1e-7)
    assert got.rows == pytest.approx(dense_angles(du.T, dv.T), abs=1e-7)
    assert len(got.columns) == 3


def test_principal_angles_of_known_subspaces():
    """Column spaces spanned by e1 and by cos(t) e1 + sin(t) e2 are t apart."""
    t = 0.4
    a = torch.zeros(1, 6, dtype=torch.float64)
    a[0, 0] = 1.0
    b1 = torch.zeros(5, 1, dtype=torch.float64)
    b1[0, 0] = 1.0
    b2 = torch.zeros(5, 1, dtype=torch.float64)
    b2[0, 0], b2[1, 0] = math.cos(t), math.sin(t)
    angles = sim.principal_angles(Factors(A=a, B=b1), Factors(A=a, B=b2))
    assert angles.columns == pytest.approx([t], abs=1e-12)
    assert angles.rows == pytest.approx([0.0], abs=1e-7)


def test_spectrum_of_a_known_delta():
    """A delta with singular values 3, 2, 1 (and a wasted rank: r = 4)."""
    q1 = torch.linalg.qr(torch.randn(10, 4, dtype=torch.float64))[0]
    q2 = torch.linalg.qr(torch.randn(8, 4, dtype=torch.float64))[0]
    s = torch.tensor([3.0, 2.0, 1.0, 0.0], dtype=torch.float64)
    f = Factors(A=(q2 * s).T, B=q1)
    spec = sim.spectrum(f)
    assert spec.singular_values == pytest.approx([3.0, 2.0, 1.0], rel=1e-12)
    assert spec.cumulative_energy == pytest.approx([9 / 14, 13 / 14, 1.0], rel=1e-12)
    p = [3 / 6, 2 / 6, 1 / 6]
    assert spec.effective_rank == pytest.approx(math.exp(-sum(x * math.log(x) for x in p)))
    assert spec.stable_rank == pytest.approx(14 / 9)
    assert spec.rank == 4
    assert spec.utilisation == pytest.approx(spec.effective_rank / 4)


def test_ia3_vectors_compare_as_vectors():
    l1 = torch.tensor([0.5, 1.0, -1.0], dtype=torch.float64)
    l2 = torch.tensor([1.0, 2.0, -2.0], dtype=torch.float64)
    assert sim.cosine(Dense(l1), Dense(l2)) == pytest.approx(1.0)
    assert sim.principal_angles(Dense(l1), Dense(l2)).columns == []


def test_compare_whole_adapters():
    q, v, o = _lora(16, 12, 2, 1), _lora(16, 12, 2, 2), _lora(16, 12, 2, 3)
    first = {"q": q, "v": v}
    second = {"q": q, "o": o}
    result = sim.compare(first, second)
    dq = _dense(q)
    flat1 = torch.cat([dq.flatten(), _dense(v).flatten(), torch.zeros(dq.numel())])
    flat2 = torch.cat([dq.flatten(), torch.zeros(dq.numel()), _dense(o).flatten()])
    assert result.cosine == pytest.approx(_dense_cos(flat1, flat2), abs=1e-10)
    expected = float((flat1 - flat2).norm() / (flat1.norm() + flat2.norm()))
    assert result.relative_distance == pytest.approx(expected, abs=1e-10)
    assert result.per_module == {"q": {"cosine": pytest.approx(1.0), "relative_distance": 0.0}}
    assert (result.only_first, result.only_second) == (["v"], ["o"])
    assert result.target_overlap == pytest.approx(1 / 3)


def test_zero_updates_and_shape_mismatch():
    zero = Factors(A=torch.zeros(2, 5), B=torch.zeros(4, 2))
    other = _lora(4, 5, 2, 1)
    assert sim.cosine(zero, other) == 0.0
    assert sim.relative_distance(zero, zero) == 0.0
    assert sim.spectrum(zero).singular_values == []
    with pytest.raises(ValueError) as err:
        sim.cosine(other, _lora(4, 6, 2, 1), module="model.layers.0.self_attn.q_proj")
    assert str(err.value) == (
        "the updates of module 'model.layers.0.self_attn.q_proj' differ in shape"
        " ((4, 5) vs (4, 6)): the adapters were trained on different base layers"
    )


def test_compare_batches_same_shape_modules_to_the_per_module_numbers():
    """`compare` stacks modules of one shape (and widens each factor once): the same cosines
    and distances as one `inner` per module, with dense, vector, bf16, rank-mismatched and
    one-sided modules mixed in."""
    g = torch.Generator().manual_seed(5)

    def factors(d, k, r, dtype=torch.float32):
        return Factors(
            A=torch.randn(r, k, generator=g).to(dtype), B=torch.randn(d, r, generator=g).to(dtype)
        )

    first = {f"l{i}.q": factors(12, 10, 3) for i in range(5)}
    second = {f"l{i}.q": factors(12, 10, 3) for i in range(5)}
    first |= {"l0.up": factors(20, 10, 2, torch.bfloat16), "l1.up": factors(20, 10, 4)}
    second |= {"l0.up": factors(20, 10, 2), "l1.up": factors(20, 10, 2)}
    first["l0.o"] = Dense(torch.randn(12, 12, generator=g))
    second["l0.o"] = factors(12, 12, 3)
    first["l0.ia3"], second["l0.ia3"] = Dense(torch.rand(8) - 0.5), Dense(torch.rand(8) - 0.5)
    first["only.first"] = factors(6, 6, 2)
    second["only.second"] = factors(6, 6, 2)
    got = sim.compare(first, second)
    shared = sorted(set(first) & set(second))
    assert sorted(got.per_module) == shared
    dot = sq1 = sq2 = 0.0
    for m in shared:
        u, v = first[m], second[m]
        assert got.per_module[m]["cosine"] == pytest.approx(sim.cosine(u, v), abs=1e-12)
        assert got.per_module[m]["relative_distance"] == pytest.approx(
            sim.relative_distance(u, v), abs=1e-12
        )
        dot += sim.inner(u, v)
    sq1 = sum(sim.inner(u, u) for u in first.values())
    sq2 = sum(sim.inner(v, v) for v in second.values())
    assert got.cosine == pytest.approx(dot / (sq1 * sq2) ** 0.5, abs=1e-12)
    assert (got.only_first, got.only_second) == (["only.first"], ["only.second"])


def test_ia3_vectors_as_peft_saves_them():
    """PEFT saves IA3's l as (d, 1) (scales outputs) or (1, k) (feed-forward: inputs). As
    vectors (no base weight) they compare with vectors of the same side only, and have no
    subspaces; a dense (1, k) weight delta (a one-output layer) is no vector."""
    g = torch.Generator().manual_seed(3)
    rows1, rows2 = torch.randn(32, 1, generator=g), torch.randn(32, 1, generator=g)
    u, v = Dense(rows1, vector=True), Dense(rows2, vector=True)
    assert sim.is_vector(u) and not sim.is_vector(Dense(torch.randn(1, 8, generator=g)))
    assert sim.cosine(u, v) == pytest.approx(_dense_cos(rows1.double(), rows2.double()), abs=1e-12)
    assert sim.principal_angles(u, v) == sim.PrincipalAngles(columns=[], rows=[])
    one_row = Dense(torch.randn(1, 8, generator=g))
    assert len(sim.principal_angles(one_row, one_row).columns) == 1

    delta = _lora(32, 64, 2, 1)
    with pytest.raises(sim.NotComparable) as err:
        sim.cosine(u, delta, module="model.layers.0.self_attn.v_proj")
    assert str(err.value) == (
        "the updates of module 'model.layers.0.self_attn.v_proj': an IA3 scaling vector (l - 1)"
        " and a weight delta are not comparable without the base weight"
    )
    with pytest.raises(sim.NotComparable) as err:
        sim.compare({"k": u}, {"q": delta})  # no module in common: still not comparable
    assert str(err.value) == (
        "IA3 scaling vectors (l - 1) and weight deltas are not comparable without the base"
        " weight (IA3's delta is (l - 1) * W)"
    )
    rows = Dense(torch.randn(64, 1, generator=g), vector=True)
    columns = Dense(torch.randn(1, 64, generator=g), vector=True)
    with pytest.raises(sim.NotComparable) as err:
        sim.compare({"down": rows}, {"down": columns})
    assert str(err.value) == (
        "the updates of module 'down': one IA3 vector scales the layer's inputs, the other its"
        " outputs ((64, 1) vs (1, 64)): comparable only as weight deltas, through the base weight"
    )
    with pytest.raises(ValueError) as err:  # the same side, other lengths: other base layers
        sim.cosine(u, Dense(torch.randn(16, 1, generator=g), vector=True))
    assert not isinstance(err.value, sim.NotComparable)
