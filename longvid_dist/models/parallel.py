"""Sequence parallelism inside one window: the tokens of a transformer forward split over a
group of ``ulysses * ring`` processes (xDiT's and diffusers' naming).

The split points are the model's own: diffusers' context-parallel plan (``_cp_plan``) names the
modules whose inputs are sharded along the sequence (the first block's hidden states, the RoPE
tables, per-token timesteps) and the module whose output is gathered (``proj_out``); an adapter
registers :class:`SequenceParallel`'s hooks there. Every self-attention layer then runs through
the adapter's processor, which calls :meth:`SequenceParallel.attention`:

- Ulysses (DeepSpeed-Ulysses, Jacobs et al. 2023): an all-to-all turns ``[B, S/P, H, D]``
  sequence shards into ``[B, S/R, H/U, D]`` head shards over the ulysses group;
- ring: the keys and values of the ring group are all-gathered (diffusers' ring attention with
  its ``allgather`` rotation does the same), so each rank attends its queries to every key in
  one softmax; an attention patch, which needs the whole token grid, gets the queries gathered
  too and returns its own rows;
- patches that mix heads (``AttentionPatch.all_heads``, e.g. FreeSpec's SVD over channels) get
  the ulysses group's heads gathered, and keep their own.

Any token count works: the sequence is padded at the end to a multiple of the group size before
sharding, the pad tokens are dropped before every attention (no real query ever sees them, and
everything else in a transformer block is per token), and the gathered output is cut back, so
padding changes nothing. Ranks are laid out ``(ring, ulysses)``: rank ``r * U + u`` holds
sequence chunk ``r * U + u``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from .hooks import AttentionPatch, AttnContext, is_plain, joint_text_attention, joint_video_attention, sdpa


@dataclass
class SequenceParallel:
    """One rank's view of its sequence-parallel group."""

    ulysses: int
    """Ulysses degree U: heads are split U ways inside attention."""
    ring: int
    """Ring degree R: keys/values are gathered over R ranks inside attention."""
    group: object
    """Process group of the whole sequence-parallel group; group rank = sequence chunk index."""
    ulysses_group: object
    """Process group of this rank's ulysses peers (same ring index), or None when U == 1."""
    ring_group: object
    """Process group of this rank's ring peers (same ulysses index), or None when R == 1."""
    ulysses_rank: int
    """This rank's index in its ulysses group."""
    ring_rank: int
    """This rank's index in its ring group."""
    seq_len: int = 0
    """Real tokens of the current forward (set by :meth:`shard`)."""
    align: int = 1
    """Tokens every chunk boundary falls on: a causal block's tokens when the adapter runs a
    block-causal forward under ring (each ring rank then owns whole blocks, and keys/values only
    flow forward: :meth:`_ring_gather_forward`); 1 otherwise."""

    @property
    def size(self) -> int:
        """Ranks in the group (``U * R``)."""
        return self.ulysses * self.ring

    @property
    def chunk_index(self) -> int:
        """Which sequence chunk this rank holds."""
        return self.ring_rank * self.ulysses + self.ulysses_rank

    def padded(self, n: int) -> int:
        """``n`` rounded up to a multiple of the group size (times :attr:`align`)."""
        unit = self.size * self.align
        return -(-n // unit) * unit

    # -- split and gather along the sequence ------------------------------------------------
    def shard(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """This rank's chunk of ``x`` along ``dim`` after padding it to a multiple of the group."""
        n = x.shape[dim]
        self.seq_len = n
        pad = self.padded(n) - n
        if pad:
            shape = list(x.shape)
            shape[dim] = pad
            x = torch.cat([x, x.new_zeros(shape)], dim=dim)
        return x.chunk(self.size, dim=dim)[self.chunk_index].contiguous()

    def gather(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """The whole sequence from every rank's chunk, padding cut off."""
        return torch.cat(_all_gather(x, self.group), dim=dim).narrow(dim, 0, self.seq_len)

    # -- attention --------------------------------------------------------------------------
    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, patch: AttentionPatch,
                  ctx: AttnContext) -> torch.Tensor:
        """Self-attention of this rank's ``[B, S/P, H, D]`` shards through ``patch`` (plain
        attention for the base class); returns this rank's ``[B, S/P, H, D]`` output rows."""
        q, k, v = (self._to_heads(x) for x in (q, k, v))  # [B, S_pad/R, H/U, D]
        plain = type(patch).attend is AttentionPatch.attend
        gather = self._ring_gather_forward if plain and ctx.mask is not None and self.align > 1 else self._ring_gather
        k, v = gather(k), gather(v)  # [B, S_pad, H/U, D]
        k, v = k[:, : self.seq_len], v[:, : self.seq_len]
        if plain:
            mask = None
            if ctx.mask is not None:  # block-causal (diffusion forcing): this rank's query rows
                rows = self.padded(self.seq_len) // self.ring
                mask = self._rows(ctx.mask, self.ring_rank * rows, rows)
            out = sdpa(q, k, v, mask)  # local queries, every real key (masked ones hidden): one softmax
        else:
            q = self._ring_gather(q)[:, : self.seq_len]
            if patch.all_heads and self.ulysses > 1:
                q, k, v = (torch.cat(_all_gather(x, self.ulysses_group), dim=2) for x in (q, k, v))
                ctx.heads = None
                out = patch.attend(q, k, v, ctx)
                out = out.chunk(self.ulysses, dim=2)[self.ulysses_rank]
            else:
                ctx.heads = self._my_heads(q.shape[2])
                out = patch.attend(q, k, v, ctx)  # [B, S, H/U, D]
            pad = self.padded(self.seq_len) - self.seq_len
            if pad:
                out = torch.cat([out, out.new_zeros(out.shape[0], pad, *out.shape[2:])], dim=1)
            out = out.chunk(self.ring, dim=1)[self.ring_rank]  # this ring rank's rows
        return self._to_sequence(out.contiguous())

    def joint_attention(self, q, k, v, text, patch: AttentionPatch, ctx: AttnContext, text_mask=None,
                        rotated=None, text_first: bool = True):
        """Joint text-video self-attention (CogVideoX, HunyuanVideo) with the video tokens split:
        ``q, k, v`` (and ``rotated``) are this rank's ``[B, S/P, H, D]`` video shards, ``text =
        (qt, kt, vt)`` every text token, the same on every rank (replicated, never split).
        Computed as :func:`~.hooks.joint_video_attention` on the whole window for this rank's
        heads; returns this rank's video rows ``[B, S/P, H, D]`` and the text tokens' output
        ``[B, T, H, D]`` (every head; the same on every rank)."""
        u0, hu = self.ulysses_rank * (q.shape[2] // self.ulysses), q.shape[2] // self.ulysses
        text = tuple(x[:, :, u0:u0 + hu] for x in text)  # this ulysses rank's heads
        vid = [self._to_heads(x) for x in (q, k, v, *(rotated or ()))]  # [B, S_pad/R, H/U, D]
        for i in (1, 2, 4):  # keys, values, rotated keys: every real token of the window
            if i < len(vid):
                vid[i] = self._ring_gather(vid[i])[:, : self.seq_len]
        q, k, v, *rot = vid
        kr = rot[1] if rot else k
        if is_plain(patch):
            out = joint_video_attention(rot[0] if rot else q, kr, v, text, patch, ctx, text_mask, None, text_first)
        else:
            q = self._ring_gather(q)[:, : self.seq_len]
            rot = [self._ring_gather(rot[0])[:, : self.seq_len], kr] if rot else []
            if patch.all_heads and self.ulysses > 1:
                full = [torch.cat(_all_gather(x, self.ulysses_group), dim=2) for x in (q, k, v, *rot, *text)]
                n = len(full) - 3
                ctx.heads = None
                out = joint_video_attention(*full[:3], tuple(full[n:]), patch, ctx, text_mask,
                                            tuple(full[3:n]) or None, text_first)
                out = out.chunk(self.ulysses, dim=2)[self.ulysses_rank]
            else:
                ctx.heads = self._my_heads(q.shape[2])
                out = joint_video_attention(q, k, v, text, patch, ctx, text_mask, tuple(rot) or None, text_first)
            pad = self.padded(self.seq_len) - self.seq_len
            if pad:
                out = torch.cat([out, out.new_zeros(out.shape[0], pad, *out.shape[2:])], dim=1)
            out = out.chunk(self.ring, dim=1)[self.ring_rank]  # this ring rank's rows
        text_out = joint_text_attention(*text, kr, v, text_mask, text_first)  # [B, T, H/U, D]
        if self.ulysses > 1:
            text_out = torch.cat(_all_gather(text_out, self.ulysses_group), dim=2)
        return self._to_sequence(out.contiguous()), text_out

    def _rows(self, mask: torch.Tensor, start: int, n: int) -> torch.Tensor:
        """Rows ``start .. start+n`` of the model's boolean ``[.., S, S]`` mask over the real
        sequence; rows past the real tokens (padding, dropped later) see every key."""
        m = mask[..., start:start + n, :]
        if m.shape[-2] < n:
            m = torch.cat([m, m.new_ones(*m.shape[:-2], n - m.shape[-2], m.shape[-1])], dim=-2)
        return m

    def _my_heads(self, local: int) -> tuple[int, int] | None:
        """``AttnContext.heads`` of this rank's ``local`` heads (None when it holds all)."""
        return None if self.ulysses == 1 else (self.ulysses_rank * local, local)

    def _ring_gather(self, x: torch.Tensor) -> torch.Tensor:
        if self.ring == 1:
            return x
        return torch.cat(_all_gather(x, self.ring_group), dim=1)

    def _ring_gather_forward(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`_ring_gather` for a block-causal forward whose ring ranks own whole blocks: no
        query of this rank sees a later rank's keys, so each rank sends its shard only to the
        ranks after it (half the bytes of an all-gather) and the later ranks' slots stay zero --
        masked out, so the attention is bit for bit the all-gather's."""
        if self.ring == 1:
            return x
        x = x.contiguous()
        parts = [x if r == self.ring_rank else torch.zeros_like(x) for r in range(self.ring)]
        peer = [dist.get_global_rank(self.ring_group, r) for r in range(self.ring)]
        ops = [dist.P2POp(dist.isend, x, peer[r], self.ring_group) for r in range(self.ring_rank + 1, self.ring)]
        ops += [dist.P2POp(dist.irecv, parts[r], peer[r], self.ring_group) for r in range(self.ring_rank)]
        for req in dist.batch_isend_irecv(ops) if ops else []:
            req.wait()
        return torch.cat(parts, dim=1)

    def _to_heads(self, x: torch.Tensor) -> torch.Tensor:
        """Ulysses all-to-all: ``[B, s, H, D]`` sequence shard -> ``[B, U*s, H/U, D]``."""
        if self.ulysses == 1:
            return x
        b, s, h, d = x.shape
        x = x.reshape(b, s, self.ulysses, h // self.ulysses, d).permute(2, 0, 1, 3, 4).contiguous()  # [U, B, s, H/U, D]
        out = torch.empty_like(x)
        dist.all_to_all_single(out, x, group=self.ulysses_group)  # out[j]: rank j's tokens, my heads
        return out.permute(1, 0, 2, 3, 4).reshape(b, self.ulysses * s, h // self.ulysses, d)

    def _to_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse all-to-all: ``[B, U*s, H/U, D]`` -> ``[B, s, H, D]``."""
        if self.ulysses == 1:
            return x
        b, us, hu, d = x.shape
        s = us // self.ulysses
        x = x.reshape(b, self.ulysses, s, hu, d).permute(1, 0, 2, 3, 4).contiguous()  # [U, B, s, H/U, D]
        out = torch.empty_like(x)
        dist.all_to_all_single(out, x, group=self.ulysses_group)  # out[j]: my tokens, rank j's heads
        return out.permute(1, 2, 0, 3, 4).reshape(b, s, self.ulysses * hu, d)


def _all_gather(x: torch.Tensor, group) -> list[torch.Tensor]:
    """Every group rank's ``x``, in group rank order."""
    x = x.contiguous()
    out = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, x, group=group)
    return out


def register_split_hooks(model: torch.nn.Module, plan: dict, sp: SequenceParallel) -> list:
    """Shard and gather where diffusers' context-parallel ``plan`` says, with ``sp``'s padding.

    ``plan`` maps a submodule name (``""`` = the model) to ``{input name or output index:
    ContextParallelInput}`` (split that input, or that output when ``split_output``) or to a
    ``ContextParallelOutput`` (gather the output). A tensor with other than ``expected_dims``
    dimensions passes through unsplit, as in diffusers; an input that is a tuple of tensors (a
RoPE table pair passed to the model) is split element by element. Returns the hook handles.
    """
    import inspect

    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    def fits(x, spec) -> bool:
        return isinstance(x, torch.Tensor) and (spec.expected_dims is None or x.dim() == spec.expected_dims)

    def split(x, spec):
        """``x`` sharded if it fits ``spec``; a tuple (RoPE's cos and sin) element by element."""
        if isinstance(x, tuple):
            return tuple(split(e, spec) for e in x)
        return sp.shard(x, spec.split_dim) if fits(x, spec) else x

    handles = []
    for name, spec in plan.items():
        module = model.get_submodule(name) if name else model
        if isinstance(spec, ContextParallelOutput):
            def gather(mod, args, out, spec=spec):
                return sp.gather(out, spec.gather_dim) if fits(out, spec) else out
            handles.append(module.register_forward_hook(gather))
            continue
        outs = {i: s for i, s in spec.items() if isinstance(s, ContextParallelInput) and s.split_output}
        ins = {n: s for n, s in spec.items() if isinstance(s, ContextParallelInput) and not s.split_output}
        if outs:
            def split_out(mod, args, out, outs=outs):
                out = list(out) if isinstance(out, tuple) else [out]
                for i, s in outs.items():
                    if fits(out[i], s):
                        out[i] = sp.shard(out[i], s.split_dim)
                return tuple(out) if len(out) > 1 else out[0]
            handles.append(module.register_forward_hook(split_out))
        if ins:
            params = list(inspect.signature(module.forward).parameters)

            def split_in(mod, args, kwargs, ins=ins, params=params):
                args = list(args)
                for n, s in ins.items():
                    if n in kwargs:
                        kwargs[n] = split(kwargs[n], s)
                    elif n in params and params.index(n) < len(args):
                        args[params.index(n)] = split(args[params.index(n)], s)
                return tuple(args), kwargs
            handles.append(module.register_forward_pre_hook(split_in, with_kwargs=True))
    return handles


def build_groups(world_rank: int, world_size: int, ulysses: int, ring: int) -> SequenceParallel:
    """This rank's :class:`SequenceParallel` in a world of ``world_size // (ulysses * ring)``
    independent groups (mesh ``(group, ring, ulysses)``: global rank ``g*P + r*U + u``).

    ``torch.distributed`` must be initialized; every rank of the world calls this (creating a
    process group is collective over the world)."""
    u_deg, r_deg = ulysses, ring
    p = u_deg * r_deg
    if world_size % p:
        raise ValueError(f"world of {world_size} ranks is not a multiple of ulysses * ring = {p}")
    mine: dict = {}
    for g in range(world_size // p):
        base = g * p
        flat = dist.new_group(list(range(base, base + p)))
        if base <= world_rank < base + p:
            mine["group"] = flat
        for r in range(r_deg):
            ranks = [base + r * u_deg + u for u in range(u_deg)]
            grp = dist.new_group(ranks) if u_deg > 1 else None
            if world_rank in ranks:
                mine["ulysses_group"] = grp
        for u in range(u_deg):
            ranks = [base + r * u_deg + u for r in range(r_deg)]
            grp = dist.new_group(ranks) if r_deg > 1 else None
            if world_rank in ranks:
                mine["ring_group"] = grp
    local = world_rank % p
    return SequenceParallel(u_deg, r_deg, mine["group"], mine["ulysses_group"], mine["ring_group"],
                            ulysses_rank=local % u_deg, ring_rank=local // u_deg)
