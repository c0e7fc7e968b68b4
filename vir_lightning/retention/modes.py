"""The retention math: parallel, recurrent and chunkwise forms, in 1D and 2D.

Every function here computes, per batch element and head h with decay rate γ_h,

    O[i] = Σ_j D_h[i, j] (q_i · k_j) v_j

with no scaling, no softmax and no normalisation. Inputs are already validated by
:func:`vir_lightning.retention.retention`; shapes are

    q, k: (batch, heads, tokens, head_dim)      v: (batch, heads, tokens, value_dim)
    log_gamma: (heads,)  — log γ_h in the compute dtype (float32, or float64 for float64 inputs)

Decay tables are always built from *floating* distances of the compute dtype (never from a 16-bit
integer tensor) with non-negative exponents only, so they underflow to 0 but never overflow.

1D (raster-causal):  D[n, m] = γ^(n−m) if n ≥ m else 0.

2D (upper-left quadrant, Manhattan decay) on an R×C grid in raster order, x = column, y = row:
    D[i, j] = γ^((x_i−x_j) + (y_i−y_j)) if x_j ≤ x_i and y_j ≤ y_i else 0.
An optional class token is the last token, at (x = C−1, y = R): it sees every patch, none sees it.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor

# ----------------------------------------------------------------------------------------------
# Decay tables
# ----------------------------------------------------------------------------------------------


def causal_decay_1d(num_tokens: int, log_gamma: Tensor) -> Tensor:
    """D[h, n, m] = γ_h^(n−m) for n ≥ m, else 0. Shape (heads, n, n), dtype of ``log_gamma``."""
    pos = torch.arange(num_tokens, dtype=log_gamma.dtype, device=log_gamma.device)
    dist = pos[:, None] - pos[None, :]
    decay = torch.exp(dist.clamp(min=0) * log_gamma[:, None, None])
    return decay.masked_fill(dist < 0, 0.0)


def grid_coords(grid_shape: tuple[int, int], class_token: bool, dtype, device) -> tuple[Tensor, Tensor]:
    """(x, y) of every token of an R×C raster grid, plus the class token at (C−1, R) if present."""
    rows, cols = grid_shape
    index = torch.arange(rows * cols, device=device)  # int64: exact for any grid
    x, y = index % cols, index // cols
    if class_token:
        x = torch.cat([x, x.new_tensor([cols - 1])])
        y = torch.cat([y, y.new_tensor([rows])])
    return x.to(dtype), y.to(dtype)


def manhattan_decay_2d(
    grid_shape: tuple[int, int], log_gamma: Tensor, class_token: bool = False, directions: int = 1
) -> Tensor:
    """The 2D decay matrix, built straight from its definition. Shape (heads, N, N).

    ``directions``: 1 = upper-left quadrant (x_j ≤ x_i and y_j ≤ y_i); 2 = that quadrant plus the
    lower-right one; 4 = every pair. The value is always γ^(|Δx| + |Δy|) and each pair counts once.
    """
    x, y = grid_coords(grid_shape, class_token, log_gamma.dtype, log_gamma.device)
    dx, dy = x[:, None] - x[None, :], y[:, None] - y[None, :]
    upper_left = (dx >= 0) & (dy >= 0)
    if directions == 1:
        visible = upper_left
    elif directions == 2:
        visible = upper_left | ((dx <= 0) & (dy <= 0))
    else:
        visible = torch.ones_like(upper_left)
    decay = torch.exp((dx.abs() + dy.abs()) * log_gamma[:, None, None])
    return decay.masked_fill(~visible, 0.0)


def decay_matrix(
    num_tokens: int,
    log_gamma: Tensor,
    grid_shape: tuple[int, int] | None = None,
    class_token: bool = False,
    directions: int = 1,
) -> Tensor:
    """The full (heads, N, N) decay matrix D of the parallel form, 1D or 2D."""
    if grid_shape is None:
        return causal_decay_1d(num_tokens, log_gamma)
    return manhattan_decay_2d(grid_shape, log_gamma, class_token, directions)


_TABLE_CACHE: OrderedDict[tuple, tuple[Tensor, ...]] = OrderedDict()
_TABLE_CACHE_ENTRIES = 64
_TABLE_CACHE_MAX_BYTES = 32 * 2**20  # per entry: a 4k-token parallel table (~400 MB) is rebuilt, not kept


def cached_tables(key: tuple, log_gamma: Tensor, build) -> tuple[Tensor, ...]:
    """``build()`` (a tuple of decay tables), memoised per (key, rates, dtype, device).

    Decay tables depend only on these, and every layer of a model asks for the same ones. They
    are built without autograd: they are constants (``log_gamma`` never requires grad). The rates
    in the key are the Python floats :func:`log_rates` was given, so a lookup never reads the device;
    under ``torch.compile`` the tables are built in the graph instead (the compiler folds them).
    """
    if torch.compiler.is_compiling():
        with torch.no_grad():
            return build()
    full_key = (*key, _rates_key(log_gamma), log_gamma.dtype, log_gamma.device)
    tables = _TABLE_CACHE.get(full_key)
    if tables is not None:
        _TABLE_CACHE.move_to_end(full_key)
        return tables
    with torch.no_grad():
        tables = build()
    if sum(t.numel() * t.element_size() for t in tables) <= _TABLE_CACHE_MAX_BYTES:
        _TABLE_CACHE[full_key] = tables
        if len(_TABLE_CACHE) > _TABLE_CACHE_ENTRIES:
            _TABLE_CACHE.popitem(last=False)
    return tables


# log γ tensors by (rates, dtype, device), never freed, so the rates of a tensor can be looked up by
# its id without reading it back from the device. Bounded: further rate sets are not registered.
_LOG_RATES: dict[tuple, Tensor] = {}
_RATES_BY_ID: dict[int, tuple[float, ...]] = {}
_LOG_RATES_MAX = 256


def log_rates(rates: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """log γ_h as a (heads,) tensor of ``dtype`` on ``device`` (computed in float64, then cast)."""

    def build() -> Tensor:
        return torch.log(torch.tensor(rates, dtype=torch.float64)).to(dtype=dtype, device=device)

    if torch.compiler.is_compiling():
        return build()
    key = (rates, dtype, device)
    log_gamma = _LOG_RATES.get(key)
    if log_gamma is None:
        log_gamma = build()
        if len(_LOG_RATES) < _LOG_RATES_MAX:
            _LOG_RATES[key] = log_gamma
            _RATES_BY_ID[id(log_gamma)] = rates
    return log_gamma


def needs_grad(*tensors: Tensor | None) -> bool:
    """Whether autograd records ops on ``tensors`` here (grad mode on and one of them requires grad)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _rates_key(log_gamma: Tensor) -> tuple[float, ...]:
    rates = _RATES_BY_ID.get(id(log_gamma))
    return rates if rates is not None else tuple(log_gamma.tolist())  # a tensor from elsewhere: one read


def decayed_cumsum(x: Tensor, log_gamma: Tensor, dim: int, exclusive: bool = False) -> Tensor:
    """out[..., i, ...] = Σ_{j ≤ i} γ^(i−j) x[..., j, ...] along ``dim`` (heads on dim 1); with
    ``exclusive`` the same sum shifted by one step: out[i] = Σ_{j ≤ i−1} γ^(i−1−j) x[j], out[0] = 0.

    A sequential scan of small fused updates: it is memory-bound, and a log-step scan rewrites
    the whole tensor at every step (measured 15× slower for 64 chunks of 64×64 states). Without
    autograd it writes straight into its output; with autograd (or under ``torch.compile``, which
    refuses ``out=`` views) it stacks the steps.
    """
    # γ must broadcast against one slice of x (``dim`` removed, heads first after batch).
    factor = torch.exp(log_gamma).view((-1,) + (1,) * (x.dim() - 3))
    inputs = x.unbind(dim)
    inputs = inputs[: len(inputs) - 1] if exclusive else inputs[1:]
    if (torch.is_grad_enabled() and x.requires_grad) or torch.compiler.is_compiling():
        running = torch.zeros_like(x.select(dim, 0)) if exclusive else x.select(dim, 0)
        steps = [running]
        for item in inputs:
            running = torch.addcmul(item, running, factor)
            steps.append(running)
        return torch.stack(steps, dim)
    out = torch.empty_like(x)
    steps = out.unbind(dim)
    steps[0].zero_() if exclusive else steps[0].copy_(x.select(dim, 0))
    for item, previous, step in zip(inputs, steps, steps[1:], strict=False):
        torch.addcmul(item, previous, factor, out=step)
    return out


# ----------------------------------------------------------------------------------------------
# Parallel form: O = (Q Kᵀ ⊙ D) V — O(N² d) time, O(N²) memory. The reference for everything else.
# ----------------------------------------------------------------------------------------------


def parallel(q: Tensor, k: Tensor, v: Tensor, decay: Tensor) -> Tensor:
    """O = (Q Kᵀ ⊙ D) V with ``decay`` of shape (heads, N, N) (broadcast over the batch)."""
    scores = q @ k.transpose(-1, -2)  # (B, H, N, N)
    return scores.mul_(decay.to(scores.dtype)) @ v  # in place: the matmul's backward does not need it


# ----------------------------------------------------------------------------------------------
# 1D recurrent and chunkwise forms
# ----------------------------------------------------------------------------------------------


def recurrent_1d(q: Tensor, k: Tensor, v: Tensor, log_gamma: Tensor) -> Tensor:
    """S_n = γ S_{n−1} + k_nᵀ v_n,  O_n = q_n S_n  (S is head_dim × value_dim, S_{−1} = 0)."""
    batch, heads, tokens, _ = q.shape
    gamma = log_gamma.exp().to(q.dtype).view(heads, 1, 1)
    state = q.new_zeros(batch, heads, q.shape[-1], v.shape[-1])
    outputs = []
    for n in range(tokens):
        state = gamma * state + k[:, :, n, :, None] * v[:, :, n, None, :]
        outputs.append(q[:, :, n, None, :] @ state)  # (B, H, 1, dv)
    return torch.cat(outputs, dim=2)


def chunk_tables_1d(
    chunk: int, log_gamma: Tensor, dtype: torch.dtype, scale: float = 1.0
) -> tuple[Tensor, Tensor, Tensor]:
    """The three per-chunk decay tables of :func:`chunkwise_1d`, each shaped to broadcast over
    (batch, heads, chunks, chunk, ·): s·D_B (H, 1, B, B), s·γ^(j+1) and γ^(B−1−j) (H, 1, B, 1).
    The two tables that multiply q's products carry its scale s."""
    pos = torch.arange(chunk, dtype=log_gamma.dtype, device=log_gamma.device)
    inner_decay = causal_decay_1d(chunk, log_gamma)[:, None] * scale
    cross_scale = torch.exp((pos + 1) * log_gamma[:, None])[:, None, :, None] * scale
    key_scale = torch.exp((chunk - 1 - pos) * log_gamma[:, None])[:, None, :, None]
    return tuple(t.to(dtype) for t in (inner_decay, cross_scale, key_scale))


def chunkwise_1d(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_gamma: Tensor,
    chunk_size: int,
    scale: float = 1.0,
    initial_state: Tensor | None = None,
    return_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Chunk i (true length b ≤ B, positions j = 0..b−1 inside it), for q scaled by s:

        inner_i = (Q_i K_iᵀ ⊙ D_b) V_i
        cross_i = (Q_i R_{i−1}) ⊙ γ^(j+1)            (row j scaled by γ^(j+1))
        R_i     = γ^b R_{i−1} + Σ_j γ^(b−1−j) K_{i,j}ᵀ V_{i,j}
        O_i     = inner_i + cross_i

    All full chunks are computed at once as batched matmuls over a (chunks, B) view of the
    sequence; only the states R_i need a scan, one d×dv update per chunk. A short last chunk
    reuses the leading part of the tables with the final state. Working memory per head: the
    B×B score block of every chunk (N·B) and one d×dv state per chunk.

    Streaming (docs/design/method.md §7): the tokens may continue a sequence whose past is summed up in
    ``initial_state`` R₀ = Σ_{m<0} γ^(−1−m) k_mᵀ v_m, (batch, heads, d, dv): it enters the scan as
    R_{−1}, so chunk i starts from its local state plus γ^(i·B) R₀, and everything else is unchanged.
    With ``return_state`` the result is ``(out, state after the last token)``.
    """
    batch, heads, tokens, _ = q.shape
    chunk = min(chunk_size, tokens)
    num_full, tail = divmod(tokens, chunk)
    full = num_full * chunk
    inner_decay, cross_scale, key_scale = cached_tables(
        ("chunk1d", chunk, q.dtype, scale), log_gamma, lambda: chunk_tables_1d(chunk, log_gamma, q.dtype, scale)
    )
    # In-place products below reuse buffers: memory traffic, not FLOPs, bounds this on a CPU.
    # None of them overwrites a tensor that autograd saved.
    # (B, H, n, chunk, ·), contiguous: one copy here instead of one inside every batched matmul.
    qc, kc, vc = (t[:, :, :full].unflatten(2, (num_full, chunk)).contiguous() for t in (q, k, v))
    inner = (qc @ kc.transpose(-1, -2)).mul_(inner_decay) @ vc
    chunk_kv = (kc * key_scale).transpose(-1, -2) @ vc  # Σ_j γ^(B−1−j) k_jᵀ v_j, (B, H, n, d, dv)
    del kc, vc  # peak memory: only q is needed from here on
    chunk_log_decay = chunk * log_gamma.to(q.dtype)
    states = decayed_cumsum(chunk_kv, chunk_log_decay, dim=2, exclusive=True)  # R_{i−1}
    if initial_state is not None:  # the past reaches chunk i decayed by γ^(i·B): R_{i−1} += γ^(i·B) R₀
        (past_decay,) = cached_tables(  # (H, chunks, 1, 1)
            ("past1d", num_full, chunk, q.dtype),
            log_gamma,
            lambda: (
                torch.exp(
                    torch.arange(num_full, dtype=log_gamma.dtype, device=log_gamma.device) * chunk * log_gamma[:, None]
                )[..., None, None].to(q.dtype),
            ),
        )
        states = states + past_decay * initial_state[:, :, None]
    # R after the full chunks: the tail starts from it, and streaming returns it.
    last_state = (
        torch.exp(chunk_log_decay).view(heads, 1, 1) * states[:, :, -1] + chunk_kv[:, :, -1]
        if tail or return_state
        else None
    )
    del chunk_kv
    inner.add_((qc @ states).mul_(cross_scale))
    del qc, states

    tail_out = None
    if tail:
        qt, kt, vt = (t[:, :, full:] for t in (q, k, v))
        tail_out = parallel(qt, kt, vt, inner_decay[:, 0, :tail, :tail]) + (qt @ last_state) * cross_scale[:, 0, :tail]
        if return_state:  # R after the tail: γ^tail R + Σ_j γ^(tail−1−j) k_jᵀ v_j
            tail_kv = (kt * key_scale[:, 0, chunk - tail :]).transpose(-1, -2) @ vt
            last_state = torch.exp(tail * log_gamma.to(q.dtype)).view(heads, 1, 1) * last_state + tail_kv
    if torch.compiler.is_compiling():
        # Traced (torch.compile, or torch.export for ONNX): one concatenation, since writes into a
        # strided buffer become scatters there.
        out = inner.flatten(2, 3) if tail_out is None else torch.cat([inner.flatten(2, 3), tail_out], dim=2)
    else:
        # The output is a (batch, tokens, heads, dv) buffer seen as (batch, heads, tokens, dv): merging
        # the heads afterwards (transpose(1, 2) + reshape) is then free instead of one more copy.
        out = q.new_empty(batch, tokens, heads, v.shape[-1]).transpose(1, 2)
        out[:, :, :full] = inner.flatten(2, 3)
        if tail_out is not None:
            out[:, :, full:] = tail_out
    return (out, last_state) if return_state else out


# ----------------------------------------------------------------------------------------------
# 2D recurrent and chunkwise forms of the upper-left quadrant (directions = 1)
# ----------------------------------------------------------------------------------------------


def recurrent_2d(
    q: Tensor, k: Tensor, v: Tensor, log_gamma: Tensor, grid_shape: tuple[int, int], class_token: bool
) -> Tensor:
    """Because γ^(Δx+Δy) = γ^Δx · γ^Δy, the quadrant sum obeys (inclusion–exclusion)

        S(y, x) = k(y,x)ᵀ v(y,x) + γ S(y−1, x) + γ S(y, x−1) − γ² S(y−1, x−1),   O(y, x) = q(y,x) S(y, x)

    with S = 0 outside the grid. Visited token by token in raster order; the state is one d×dv
    matrix per column of the previous row. With a class token the walk continues along row R,
    whose cells before column C−1 are empty: they add no kᵀv but still carry state to the right.
    """
    rows, cols = grid_shape
    heads = q.shape[1]
    gamma = log_gamma.exp().to(q.dtype).view(heads, 1, 1)
    gamma_sq = gamma * gamma
    zero = q.new_zeros(q.shape[0], heads, q.shape[-1], v.shape[-1])
    previous_row = [zero] * cols
    outputs = []
    for y in range(rows + int(class_token)):
        current_row, left, up_left = [], zero, zero
        for x in range(cols):
            up = previous_row[x]
            state = gamma * (up + left) - gamma_sq * up_left
            token = y * cols + x if y < rows else (rows * cols if x == cols - 1 else None)
            if token is not None:
                state = state + k[:, :, token, :, None] * v[:, :, token, None, :]
                outputs.append(q[:, :, token, None, :] @ state)
            current_row.append(state)
            left, up_left = state, up
        previous_row = current_row
    return torch.cat(outputs, dim=2)


def chunk_tables_2d(
    tile: tuple[int, int], log_gamma: Tensor, dtype: torch.dtype, scale: float = 1.0
) -> tuple[Tensor, ...]:
    """The decay tables of one th×tw tile of :func:`chunkwise_2d` (tile coordinates yl, xl):

    - s·quadrant mask of the tile, (H, th·tw, th·tw) (raster order inside the tile);
    - s·γ^(yl+1), (H, th, 1, 1): what reaches a tile row from the band above;
    - s·γ^(xl+1), (H, 1, tw, 1): what reaches a tile column from the tiles to the left;
    - γ^(tw−1−xl), (H, 1, tw, 1), and γ^(th−1−yl), (H, th, 1, 1): a key's decay to the tile's
      right edge and bottom row;
    - γ^(a−b) for b ≤ a (else 0) of sizes th and tw: the decayed prefix sums inside a tile as matmuls;
    - γ^(xl+1), unscaled, (H, tw, 1): the left state's decay into the bottom-row state.
    """
    rows, cols = tile
    lg = log_gamma
    row_pos = torch.arange(rows, dtype=lg.dtype, device=lg.device)
    col_pos = torch.arange(cols, dtype=lg.dtype, device=lg.device)
    lg_ = lg[:, None]
    tables = (
        manhattan_decay_2d(tile, lg) * scale,
        (torch.exp((row_pos + 1) * lg_) * scale)[..., None, None],
        (torch.exp((col_pos + 1) * lg_) * scale)[:, None, :, None],
        torch.exp((cols - 1 - col_pos) * lg_)[:, None, :, None],
        torch.exp((rows - 1 - row_pos) * lg_)[..., None, None],
        causal_decay_1d(rows, lg),
        causal_decay_1d(cols, lg),
        torch.exp((col_pos + 1) * lg_)[..., None],
    )
    return tuple(t.to(dtype) for t in tables)


def chunkwise_2d(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_gamma: Tensor,
    grid_shape: tuple[int, int],
    class_token: bool,
    rows_per_chunk: int,
    initial_state: Tensor | None = None,
    return_state: bool = False,
    cols_per_chunk: int | None = None,
    scale: float = 1.0,
) -> Tensor | tuple[Tensor, Tensor]:
    """The quadrant in tiles of th = ``rows_per_chunk`` rows × tw = ``cols_per_chunk`` columns
    (default: whole rows), for q scaled by s. Bands of th rows are visited top to bottom; the tiles of
    a band are computed together. For a token (y, x) of the tile at (Y0, X0), everything it sees
    outside its tile comes through two states:

        P(x) = S(Y0−1, x)   the quadrant state of the row above the band, one d×dv per column:
             everything above (including up-left) reaches (y, x) as γ^(y−Y0+1) · q P(x);
        L(y) = Σ_{Y0 ≤ y' ≤ y, x' < X0} γ^((y−y') + (X0−1−x')) k(y',x')ᵀ v(y',x')
             the band's part left of the tile, one d×dv per tile row: it reaches (y, x) as γ^(x−X0+1) · q L(y);

    and the within-tile term is the parallel quadrant mask of the tile. Per tile, with local
    coordinates (yl, xl) and E(y) = Σ_{y' ≤ y, x'} γ^((y−y') + (tw−1−xl')) kᵀv (the tile's own
    contribution at its right edge), L of the next tile is γ^tw L + E; after the band

        P(x) ← γ^th P(x) + γ^(xl+1) L(th−1) + Σ_{x' ≤ x in tile} γ^(x−x') W(x'),   W(x') = Σ_{y'} γ^(th−1−yl') kᵀv

    The prefix sums inside a tile are matmuls with th×th and tw×tw decay tables, and the only loop
    over tiles is the scan of L (C / tw steps per band): time is linear in the tokens for a fixed
    tile. Working memory: one tile block per tile of a band, O(C·d·dv) states per head.

    A ragged last band uses the leading rows of the tables; a ragged last tile is padded with zero
    keys and values on the right (they contribute nothing; their outputs are dropped). The class
    token at (C−1, R) is a final one-token step (:func:`quadrant_class_token`).

    Streaming (docs/design/method.md §7): the rows may continue a grid whose rows above are summed up in
    ``initial_state`` = P(x) of the row just above them, (batch, heads, C, d, dv); the decays are
    shift-invariant, so nothing else depends on where the rows are. With ``return_state`` the
    result is ``(out, P after the last row)``.
    """
    rows, cols = grid_shape
    batch, heads = q.shape[:2]
    head_dim, value_dim = q.shape[-1], v.shape[-1]
    lg = log_gamma
    th, tw = min(rows_per_chunk, rows), min(cols_per_chunk or cols, cols)
    num_tiles = -(-cols // tw)
    padded_cols = num_tiles * tw
    n_grid = rows * cols
    inner_decay, row_cross, col_cross, key_to_edge, key_to_bottom, row_prefix, col_prefix, left_to_bottom = (
        cached_tables(("tile2d", th, tw, q.dtype, scale), lg, lambda: chunk_tables_2d((th, tw), lg, q.dtype, scale))
    )

    def tiled(t: Tensor) -> Tensor:  # (B, H, R·C, e) → (B, H, tiles, R, tw, e): a band's tiles are one view
        g = t[:, :, :n_grid].unflatten(2, (rows, cols))
        if padded_cols != cols:
            g = F.pad(g, (0, 0, 0, padded_cols - cols))
        return g.unflatten(3, (num_tiles, tw)).permute(0, 1, 3, 2, 4, 5).contiguous()

    qt, kt, vt = tiled(q), tiled(k), tiled(v)
    out = q.new_empty(batch, heads, num_tiles, rows, tw, value_dim)
    state = q.new_zeros(batch, heads, padded_cols, head_dim, value_dim)  # P(x)
    if initial_state is not None:
        state[:, :, :cols] = initial_state
    log_decay_per_tile = (tw * lg).to(q.dtype)
    recording = needs_grad(q, k, v, initial_state)
    for y0 in range(0, rows, th):
        r = min(th, rows - y0)
        qb, kb, vb = (t[:, :, :, y0 : y0 + r] for t in (qt, kt, vt))  # (B, H, tiles, r, tw, ·)
        inner = parallel(*(t.flatten(3, 4) for t in (qb, kb, vb)), inner_decay[:, None, : r * tw, : r * tw])
        band_out = out[:, :, :, y0 : y0 + r]
        band_out.copy_(inner.unflatten(3, (r, tw)))
        del inner
        # From above: γ^(yl+1) q(y, x) P(x) — per column, so columns lead the batched matmul.
        tile_state = state.unflatten(2, (num_tiles, tw))  # (B, H, tiles, tw, d, dv)
        above = qb.transpose(3, 4) @ tile_state  # (B, H, tiles, tw, r, dv)
        band_out.add_(above.transpose(3, 4).mul_(row_cross[:, None, :r]))
        del above
        # The band's part left of each tile: E per tile, then an exclusive scan over the tiles.
        row_kv = (kb * key_to_edge[:, None]).transpose(-1, -2) @ vb  # M(y), (B, H, tiles, r, d, dv)
        edge = (row_prefix[:, None, :r, :r] @ row_kv.flatten(4)).view_as(row_kv)  # E(y)
        del row_kv
        left = decayed_cumsum(edge, log_decay_per_tile, dim=2, exclusive=True)  # L(y) of every tile
        band_out.add_((qb @ left).mul_(col_cross[:, None]))
        if y0 + r < rows or class_token or return_state:
            bottom = key_to_bottom[:, None, th - r : th]  # γ^(r−1−yl) for the r rows of this band
            column_kv = (kb * bottom).permute(0, 1, 2, 4, 5, 3) @ vb.transpose(3, 4)  # W(x'), (B,H,tiles,tw,d,dv)
            column_sum = (col_prefix[:, None] @ column_kv.flatten(4)).view_as(column_kv)
            column_sum.add_(left[:, :, :, r - 1, None] * left_to_bottom[:, None, :, :, None])
            band_decay = torch.exp(r * lg).to(q.dtype).view(heads, 1, 1, 1)
            if recording:  # ``above`` saved a view of the old state for the backward pass
                state = band_decay * state + column_sum.flatten(2, 3)
            else:  # in place: the state is the largest tensor of the loop (C·d·dv per head)
                state.mul_(band_decay).add_(column_sum.flatten(2, 3))
        del left, edge
    out = out.permute(0, 1, 3, 2, 4, 5).flatten(3, 4)[:, :, :, :cols].flatten(2, 3)  # (B, H, R·C, dv)
    state = state[:, :, :cols]
    if class_token:
        cls_out = quadrant_class_token(q[:, :, -1:] * scale, k[:, :, -1:], v[:, :, -1:], lg, state)
        out = torch.cat([out, cls_out], dim=2)
    return (out, state) if return_state else out


def quadrant_class_token(q: Tensor, k: Tensor, v: Tensor, log_gamma: Tensor, state: Tensor) -> Tensor:
    """The class token at (C−1, R), below the last grid row: row R holds no other token, so

        S(R, C−1) = k_clsᵀ v_cls + γ S(R−1, C−1),   O_cls = γ q P(C−1) + (q·k) v

    with ``state`` = P(x) = S(R−1, x), (batch, heads, C, d, dv). q, k, v: (batch, heads, 1, ·).
    """
    gamma = log_gamma.exp().to(q.dtype).view(q.shape[1], 1, 1)
    return gamma * (q @ state[:, :, -1]) + (q * k).sum(-1, keepdim=True) * v


# ----------------------------------------------------------------------------------------------
# More directions from the quadrant: flips, and a one-cell shift for strict quadrants
# ----------------------------------------------------------------------------------------------


def flip_grid(t: Tensor, grid_shape: tuple[int, int], rows: bool, cols: bool) -> Tensor:
    """Reverse the grid's rows and/or columns of a (B, H, R·C, dim) token tensor."""
    dims = [d for d, flag in ((2, rows), (3, cols)) if flag]
    if not dims:
        return t
    b, h, n, d = t.shape
    return t.reshape(b, h, *grid_shape, d).flip(dims).reshape(b, h, n, d)


def shift_grid(t: Tensor, grid_shape: tuple[int, int], rows: bool, cols: bool) -> Tensor:
    """t'(y, x) = t(y − rows, x − cols), zero where that falls outside the grid.

    Feeding shifted keys and values to the closed quadrant makes it strict along that axis:
    Σ_{x' ≤ x} γ^(x−x') k'(x') = γ^(−1) Σ_{x'' < x} γ^(x−x'') k(x''), hence the γ factor the caller
    multiplies back in.
    """
    b, h, n, d = t.shape
    g = t.reshape(b, h, *grid_shape, d)
    if rows:
        g = F.pad(g[:, :, :-1], (0, 0, 0, 0, 1, 0))
    if cols:
        g = F.pad(g[:, :, :, :-1], (0, 0, 1, 0))
    return g.reshape(b, h, n, d)


def multi_direction_2d(
    quadrant, q: Tensor, k: Tensor, v: Tensor, log_gamma: Tensor, grid_shape, directions: int, scale: float = 1.0
):
    """Sum of quadrant passes over flipped grids so that each position pair counts once.

    With Δ = source − target: directions = 4 partitions the plane into
        {Δx ≤ 0, Δy ≤ 0}  the closed quadrant,
        {Δx > 0, Δy ≤ 0}  columns flipped, strict in x,
        {Δx ≤ 0, Δy > 0}  rows flipped, strict in y,
        {Δx > 0, Δy > 0}  both flipped, strict in both,
    which sums to the symmetric Manhattan decay γ^(|Δx|+|Δy|). directions = 2 is the closed
    upper-left plus the closed lower-right quadrant minus the token itself (their only overlap).
    ``quadrant(q, k, v)`` is the recurrent or chunkwise closed-quadrant function; ``scale`` is the
    factor on q it applies (1 when the caller scaled q itself).
    """
    heads = q.shape[1]
    out = quadrant(q, k, v)
    if directions == 2:
        flipped = [flip_grid(t, grid_shape, True, True) for t in (q, k, v)]
        out = out + flip_grid(quadrant(*flipped), grid_shape, True, True)
        return out - scale * (q * k).sum(-1, keepdim=True) * v
    for flip_rows, flip_cols in ((False, True), (True, False), (True, True)):
        qf, kf, vf = (flip_grid(t, grid_shape, flip_rows, flip_cols) for t in (q, k, v))
        kf, vf = (shift_grid(t, grid_shape, flip_rows, flip_cols) for t in (kf, vf))
        strict = torch.exp((flip_rows + flip_cols) * log_gamma).to(q.dtype).view(heads, 1, 1)
        out = out + strict * flip_grid(quadrant(qf, kf, vf), grid_shape, flip_rows, flip_cols)
    return out
