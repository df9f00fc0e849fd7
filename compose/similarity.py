"""Weight-space similarity and spectra of adapters, computed in low rank. No file I/O.

A LoRA module's update is ``delta = B @ A`` (``Factors``, scale folded into B). Every quantity
here is a function of the delta alone, so it is the same for ``(B R, R^-1 A)`` as for ``(B, A)``
(a cosine of the raw factors, as some tools report, is not). Nothing forms the d x k delta:

- Inner products: ``<B1 A1, B2 A2>_F = tr(A1^T B1^T B2 A2) = tr((B1^T B2)(A2 A1^T))``, two
  r1 x r2 products.
- Subspaces and spectra: QR of ``B`` and ``A^T`` and an SVD of the r x r core ``Rb Ra^T``
  (the same steps as ``compose.merge.svd_merge``) give the delta's thin SVD.

Dense deltas (LoHa, LoKr, OFT, BOFT, and IA3's ``(l - 1) * W`` when the base weight is at hand)
go through the same functions as ``Dense`` values: the inner product is then a plain elementwise
sum. Without the base, IA3 is its ``l - 1`` vectors, as PEFT saves them (``(d, 1)`` or
``(1, k)``, marked ``Dense(..., vector=True)``): comparable with other IA3 vectors only, with no
subspaces or spectrum.

All arithmetic is fp64; results are Python floats.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

from compose.merge import Factors

if TYPE_CHECKING:
    from torch import Tensor


@dataclass
class Dense:
    """A module's update given whole: a dense delta, or IA3's ``l - 1`` scaling vector."""

    delta: Tensor
    vector: bool = False
    """True for IA3's ``l - 1`` as saved (``(d, 1)`` scales outputs, ``(1, k)`` inputs): a
    scaling, not a weight delta. A flag, not a shape test: a dense delta of a layer with one
    output (a 1-label score head) is ``(1, k)`` too."""


class NotComparable(ValueError):
    """Two updates measure different things: an IA3 scaling vector and a weight delta (or
    vectors scaling different sides of a layer). Only the base weight makes them weight deltas."""


Update = Union[Factors, Dense]  # noqa: UP007 (a runtime alias, py3.10 has no `type`)

# Singular values below this fraction of the largest are numerical zeros when a subspace's
# dimension is decided (the delta of a rank-r LoRA can have rank < r).
_RANK_TOL = 1e-10


def inner(u: Update, v: Update, *, module: str = "") -> float:
    """Frobenius inner product ``<delta_u, delta_v>`` of two updates of one module.

    Low rank: ``tr((B1^T B2)(A2 A1^T))``, O((d + k) r1 r2) work. A factored and a dense update
    are combined as ``sum((B1^T D) * A1)``, one d x k pass over the dense one only.

    Raises:
        NotComparable: an IA3 vector and a weight delta.
        ValueError: the updates' shapes differ (different base layers).
    """
    import torch

    _check_shapes(u, v, module)
    if isinstance(u, Factors) and isinstance(v, Factors):
        bb = u.B.double().T @ v.B.double()  # r1 x r2
        aa = v.A.double() @ u.A.double().T  # r2 x r1
        return float(torch.einsum("ij,ji->", bb, aa))
    if isinstance(u, Dense) and isinstance(v, Dense):
        return float((u.delta.double() * v.delta.double()).sum())
    f, d = (u, v) if isinstance(u, Factors) else (v, u)
    assert isinstance(f, Factors) and isinstance(d, Dense)
    return float(((f.B.double().T @ d.delta.double()) * f.A.double()).sum())


def norm(u: Update) -> float:
    """Frobenius norm of the update."""
    return math.sqrt(max(inner(u, u), 0.0))


def cosine(u: Update, v: Update, *, module: str = "") -> float:
    """``<du, dv> / (|du| |dv|)``, in [-1, 1]; 0.0 when either update is zero."""
    return _cosine(inner(u, v, module=module), inner(u, u), inner(v, v))


def relative_distance(u: Update, v: Update, *, module: str = "") -> float:
    """``|du - dv| / (|du| + |dv|)``: 0 for equal updates, 1 for opposite ones (``dv = -c du``).

    Symmetric and bounded, unlike ``|du - dv| / |du|``. From the expansion
    ``|du - dv|^2 = |du|^2 + |dv|^2 - 2 <du, dv>``, so it stays in low rank. 0.0 when both are
    zero.
    """
    return _distance(inner(u, v, module=module), max(inner(u, u), 0.0), max(inner(v, v), 0.0))


@dataclass
class ThinSvd:
    """The delta's thin SVD: ``delta = U diag(S) V^T`` with orthonormal ``U`` (d x n), ``V``
    (k x n), descending ``S``; n is the delta's numerical rank."""

    U: Tensor
    S: Tensor
    V: Tensor


def thin_svd(u: Update) -> ThinSvd:
    """The update's thin SVD: QR of ``B`` and ``A^T``, SVD of the r x r core ``Rb Ra^T``.

    A dense update is decomposed directly (it is already d x k). Numerical zeros (below
    ``1e-10`` of the largest singular value) are dropped, so ``S`` has the delta's true rank.
    """
    import torch

    if isinstance(u, Factors):
        qb, rb = torch.linalg.qr(u.B.double())
        qa, ra = torch.linalg.qr(u.A.double().T)
        cu, s, cvh = torch.linalg.svd(rb @ ra.T)
        left, right = qb @ cu, qa @ cvh.T
    else:
        delta = u.delta.double()
        if delta.dim() == 1:
            delta = delta.unsqueeze(1)
        left, s, vh = torch.linalg.svd(delta, full_matrices=False)
        right = vh.T
    keep = int((s > _RANK_TOL * s[0]).sum()) if s.numel() and s[0] > 0 else 0
    return ThinSvd(U=left[:, :keep], S=s[:keep], V=right[:, :keep])


@dataclass
class PrincipalAngles:
    """Principal angles (radians, ascending) between two deltas' column and row spaces."""

    columns: list[float]
    rows: list[float]


def principal_angles(u: Update, v: Update, *, module: str = "") -> PrincipalAngles:
    """Angles between the column spaces (outputs each update writes to) and the row spaces
    (inputs it reads from) of two updates: ``arccos`` of the singular values of ``U1^T U2``.

    Of two subspaces of dimensions n1 and n2 there are ``min(n1, n2)`` angles; 0 means a
    shared direction, pi/2 an orthogonal one. Vectors (IA3) have no such subspaces: [].
    """
    import torch

    _check_shapes(u, v, module)
    if is_vector(u) or is_vector(v):
        return PrincipalAngles(columns=[], rows=[])
    su, sv = thin_svd(u), thin_svd(v)

    def angles(x: Tensor, y: Tensor) -> list[float]:
        if x.shape[1] == 0 or y.shape[1] == 0:
            return []
        cos = torch.linalg.svdvals(x.T @ y).clamp(-1.0, 1.0)
        return [float(a) for a in torch.arccos(cos)]

    return PrincipalAngles(columns=angles(su.U, sv.U), rows=angles(su.V, sv.V))


@dataclass
class Spectrum:
    """One module's singular values and the ranks they imply."""

    singular_values: list[float]
    cumulative_energy: list[float]
    """Fraction of the squared Frobenius norm kept by the top 1, 2, ... singular values."""
    effective_rank: float
    """``exp`` of the entropy of ``s_i / sum(s)`` (Roy & Vetterli, 2007)."""
    stable_rank: float
    """``|delta|_F^2 / |delta|_2^2``."""
    rank: int
    """The rank the adapter was trained with (r of the factors; the numerical rank if dense)."""

    @property
    def utilisation(self) -> float:
        """Effective rank over trained rank: how much of r the adapter really uses."""
        return self.effective_rank / self.rank if self.rank else 0.0


def spectrum(u: Update) -> Spectrum:
    """Singular values of the update from its r x r core, and the ranks derived from them."""
    s = [float(x) for x in thin_svd(u).S]
    rank = u.rank if isinstance(u, Factors) else len(s)
    total_sq = sum(x * x for x in s)
    total = sum(s)
    if not s or total == 0.0:
        return Spectrum([], [], 0.0, 0.0, rank)
    running, cumulative = 0.0, []
    for x in s:
        running += x * x
        cumulative.append(running / total_sq)
    entropy = -sum((x / total) * math.log(x / total) for x in s if x > 0)
    return Spectrum(
        singular_values=s,
        cumulative_energy=cumulative,
        effective_rank=math.exp(entropy),
        stable_rank=total_sq / (s[0] * s[0]),
        rank=rank,
    )


@dataclass
class Similarity:
    """Two adapters compared module by module and as a whole."""

    cosine: float
    """Over all modules together: ``sum <du, dv> / sqrt(sum |du|^2 * sum |dv|^2)``."""
    relative_distance: float
    per_module: dict[str, dict[str, float]]
    """Modules both adapt: ``cosine`` and ``relative_distance``."""
    only_first: list[str]
    only_second: list[str]
    target_overlap: float
    """Jaccard index of the two sets of adapted modules."""


def compare(first: Mapping[str, Update], second: Mapping[str, Update]) -> Similarity:
    """Compare two adapters given as ``module -> update`` maps.

    A module only one adapter changes adds to that adapter's norm and nothing to the inner
    product (the other's update there is zero), so the overall cosine is that of the two whole
    updates, concatenated over every module.

    Raises:
        NotComparable: one adapter is IA3 vectors, the other weight deltas (their norms are not
            in the same units, even over modules only one of them adapts).
        ValueError: a shared module's updates differ in shape (different base layers).
    """
    if any(map(is_vector, first.values())) != any(map(is_vector, second.values())):
        raise NotComparable(
            "IA3 scaling vectors (l - 1) and weight deltas are not comparable without the"
            " base weight (IA3's delta is (l - 1) * W)"
        )
    shared = sorted(set(first) & set(second))
    for m in shared:
        _check_shapes(first[m], second[m], m)
    # Each module's squared norms and cross term once (three r x r traces): cosine and
    # distance follow from them, overall and per module.
    sq_first, sq_second, cross = _traces(first, second, shared)
    sq_first = {m: max(x, 0.0) for m, x in sq_first.items()}
    sq_second = {m: max(x, 0.0) for m, x in sq_second.items()}
    per_module = {
        m: {
            "cosine": _cosine(cross[m], sq_first[m], sq_second[m]),
            "relative_distance": _distance(cross[m], sq_first[m], sq_second[m]),
        }
        for m in shared
    }
    dot, sq1, sq2 = sum(cross.values()), sum(sq_first.values()), sum(sq_second.values())
    overall_cos = _cosine(dot, sq1, sq2)
    dist = _distance(dot, sq1, sq2)
    union = set(first) | set(second)
    return Similarity(
        cosine=overall_cos,
        relative_distance=dist,
        per_module=per_module,
        only_first=sorted(set(first) - set(second)),
        only_second=sorted(set(second) - set(first)),
        target_overlap=len(shared) / len(union) if union else 1.0,
    )


_BATCH_ELEMENTS = 1 << 24
"""Factor elements per operand stacked at once by ``_traces`` (128 MiB of fp64)."""


Traces = dict[str, float]


def _traces(
    first: Mapping[str, Update], second: Mapping[str, Update], shared: Sequence[str]
) -> tuple[Traces, Traces, Traces]:
    """``|du|^2`` of every module of ``first``, ``|dv|^2`` of ``second``'s and ``<du, dv>`` of
    the ``shared`` ones: the numbers of one ``inner`` call each.

    Shared factored modules of one shape (a model's q_proj of every layer, say) are stacked
    and their three traces computed in a few batched fp64 products, each factor widened to
    fp64 once. One call per module spent its time converting each factor to fp64 again for
    every trace it enters (and dispatching six small products), not computing them.
    """
    import torch

    sq1: Traces = {}
    sq2: Traces = {}
    cross: Traces = {}
    groups: dict[tuple[Any, ...], list[tuple[str, Factors, Factors]]] = {}
    for m in shared:
        u, v = first[m], second[m]
        if isinstance(u, Factors) and isinstance(v, Factors):
            key = tuple((tuple(f.B.shape), tuple(f.A.shape), f.B.device) for f in (u, v))
            groups.setdefault(key, []).append((m, u, v))
    batched = {m for members in groups.values() for m, _, _ in members}
    for m, u in first.items():
        if m not in batched:
            sq1[m] = inner(u, u)
    for m, v in second.items():
        if m not in batched:
            sq2[m] = inner(v, v)
    for m in shared:
        if m not in batched:
            cross[m] = inner(first[m], second[m], module=m)

    def stacked(tensors: list[Tensor]) -> Tensor:
        out = torch.empty((len(tensors), *tensors[0].shape), dtype=torch.float64,
                          device=tensors[0].device)  # fmt: skip
        for i, t in enumerate(tensors):
            out[i].copy_(t)  # widened while copied: one pass over each factor
        return out

    def trace(bb: Tensor, aa: Tensor) -> list[float]:
        return torch.einsum("nij,nji->n", bb, aa).tolist()

    for members in groups.values():
        _, u, v = members[0]
        size = (u.B.shape[0] + u.A.shape[1]) * max(u.rank, v.rank)
        step = max(1, _BATCH_ELEMENTS // max(1, size))
        for start in range(0, len(members), step):
            chunk = members[start : start + step]
            names = [m for m, _, _ in chunk]
            b1, a1 = stacked([u.B for _, u, _ in chunk]), stacked([u.A for _, u, _ in chunk])
            b2, a2 = stacked([v.B for _, _, v in chunk]), stacked([v.A for _, _, v in chunk])
            bt1, at1 = b1.transpose(1, 2), a1.transpose(1, 2)
            sq1.update(zip(names, trace(bt1 @ b1, a1 @ at1), strict=True))
            sq2.update(zip(names, trace(b2.transpose(1, 2) @ b2, a2 @ a2.transpose(1, 2)),
                           strict=True))  # fmt: skip
            cross.update(zip(names, trace(bt1 @ b2, a2 @ at1), strict=True))
    return sq1, sq2, cross


def _cosine(dot: float, sq1: float, sq2: float) -> float:
    return _clamp(dot / math.sqrt(sq1 * sq2)) if sq1 > 0 and sq2 > 0 else 0.0


def _distance(dot: float, sq1: float, sq2: float) -> float:
    n1, n2 = math.sqrt(sq1), math.sqrt(sq2)
    if n1 + n2 == 0.0:
        return 0.0
    return min(math.sqrt(max(sq1 + sq2 - 2.0 * dot, 0.0)) / (n1 + n2), 1.0)


def _shape(u: Update) -> tuple[int, ...]:
    if isinstance(u, Factors):
        return (int(u.B.shape[0]), int(u.A.shape[1]))
    return tuple(int(x) for x in u.delta.shape)


def is_vector(u: Update) -> bool:
    """Whether ``u`` is an IA3 scaling vector (no weight delta: no subspaces, no spectrum)."""
    return isinstance(u, Dense) and (u.vector or u.delta.dim() == 1)


def _scaled_side(u: Update) -> str | None:
    """What an IA3 vector scales: ``outputs`` (``(d, 1)``, rows) or ``inputs`` (``(1, k)``,
    feed-forward layers' columns); None for anything else."""
    if not isinstance(u, Dense) or not is_vector(u) or u.delta.dim() != 2:
        return None
    rows, cols = _shape(u)
    return "outputs" if cols == 1 < rows else "inputs" if rows == 1 < cols else None


def _check_shapes(u: Update, v: Update, module: str) -> None:
    where = f"the updates of module {module!r}" if module else "the updates"
    if is_vector(u) != is_vector(v):
        raise NotComparable(
            f"{where}: an IA3 scaling vector (l - 1) and a weight delta are not comparable"
            " without the base weight"
        )
    sides = {_scaled_side(u), _scaled_side(v)}
    if sides == {"inputs", "outputs"}:
        raise NotComparable(
            f"{where}: one IA3 vector scales the layer's inputs, the other its outputs"
            f" ({_shape(u)} vs {_shape(v)}): comparable only as weight deltas, through the"
            " base weight"
        )
    if _shape(u) != _shape(v):
        raise ValueError(
            f"{where} differ in shape ({_shape(u)} vs {_shape(v)}): the adapters were trained"
            " on different base layers"
        )


def _clamp(x: float) -> float:
    return max(-1.0, min(1.0, x))
