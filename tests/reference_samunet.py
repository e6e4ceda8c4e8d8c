"""Test-only reference SAM-UNet, written in the structure of the published code.

Plain functions over a published-layout state dict (no import of ``sam_unet.models``):
explicit zero padding to whole windows, explicit ``softmax(q k^T * scale + rel_pos) v``
attention with SAM's ``get_rel_pos`` / ``add_decomposed_rel_pos``, SAM's LayerNorm2d formula,
and a Python loop over images for the prompt encoder and mask decoder (one box per image).

Also holds small test helpers: reading the state-dict .tsv fixtures and making random state
dicts in a given layout.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

FIXTURES = Path(__file__).parent / "fixtures"
ENC = "image_encoder.sam_img_encoder."
GLOBAL_BLOCKS = (2, 5, 8, 11)


# ---------------------------------------------------------------------------------------------
# helpers


def read_tsv(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) rows of a fixture .tsv (comment lines start with '#')."""
    rows = []
    for line in (FIXTURES / name).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, shape = line.split("\t")
        dims = shape.strip().strip("()").replace(" ", "")
        rows.append((key, tuple(int(d) for d in dims.split(",") if d)))
    return rows


def random_state_dict(
    shapes: list[tuple[str, tuple[int, ...]]], seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random tensors of the given shapes, scaled so that a forward pass stays well-conditioned."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        # unit-variance uniform noise (much cheaper than normal for 100M+ values)
        return torch.empty(*shape).uniform_(-math.sqrt(3.0), math.sqrt(3.0), generator=g)

    sd: dict[str, torch.Tensor] = {}
    embeddings = ("point_embeddings", "not_a_point_embed", "no_mask_embed", "med_token")
    for key, shape in shapes:
        if key.endswith("num_batches_tracked"):
            t = torch.tensor(7, dtype=torch.long)
        elif key.endswith("running_mean"):
            t = 0.1 * randn(*shape)
        elif key.endswith("running_var"):
            t = 0.5 + torch.rand(*shape, generator=g)
        elif key.endswith("positional_encoding_gaussian_matrix"):
            t = randn(*shape)
        elif key.endswith("pos_embed"):
            t = 0.5 * randn(*shape)
        elif "rel_pos" in key:
            t = 0.2 * randn(*shape)
        elif any(e in key for e in embeddings):
            t = randn(*shape)
        elif len(shape) == 1 and key.endswith(".weight"):
            t = 1.0 + 0.1 * randn(*shape)
        elif len(shape) == 1:
            t = 0.05 * randn(*shape)
        else:
            fan_in = math.prod(shape[1:])
            t = randn(*shape) / math.sqrt(fan_in)
        sd[key] = t
    return sd


# ---------------------------------------------------------------------------------------------
# building blocks (SAM formulas)


def layer_norm_2d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float = 1e-6):
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    x = (x - u) / torch.sqrt(s + eps)
    return w[:, None, None] * x + b[:, None, None]


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    if rel_pos.shape[0] != max_rel_dist:
        resized = F.interpolate(
            rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1),
            size=max_rel_dist,
            mode="linear",
        )
        resized = resized.reshape(-1, max_rel_dist).permute(1, 0)
    else:
        resized = rel_pos
    q_coords = torch.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return resized[relative.long()]


def add_decomposed_rel_pos(attn, q, rel_pos_h, rel_pos_w, q_size, k_size):
    q_h, q_w = q_size
    k_h, k_w = k_size
    rh = get_rel_pos(q_h, k_h, rel_pos_h)
    rw = get_rel_pos(q_w, k_w, rel_pos_w)
    b, _, dim = q.shape
    r_q = q.reshape(b, q_h, q_w, dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rh)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rw)
    attn = (
        attn.view(b, q_h, q_w, k_h, k_w) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]
    ).view(b, q_h * q_w, k_h * k_w)
    return attn


def vit_attention(sd, p: str, x: torch.Tensor, num_heads: int) -> torch.Tensor:
    b, h, w, _ = x.shape
    qkv = F.linear(x, sd[p + "qkv.weight"], sd[p + "qkv.bias"])
    qkv = qkv.reshape(b, h * w, 3, num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, b * num_heads, h * w, -1).unbind(0)
    scale = q.shape[-1] ** -0.5
    attn = (q * scale) @ k.transpose(-2, -1)
    attn = add_decomposed_rel_pos(attn, q, sd[p + "rel_pos_h"], sd[p + "rel_pos_w"], (h, w), (h, w))
    attn = attn.softmax(dim=-1)
    x = (attn @ v).view(b, num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
    return F.linear(x, sd[p + "proj.weight"], sd[p + "proj.bias"])


def window_partition(x: torch.Tensor, ws: int):
    b, h, w, c = x.shape
    pad_h = (ws - h % ws) % ws
    pad_w = (ws - w % ws) % ws
    if pad_h > 0 or pad_w > 0:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // ws, ws, wp // ws, ws, c)
    windows = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws, ws, c)
    return windows, (hp, wp)


def window_unpartition(windows, ws, pad_hw, hw):
    hp, wp = pad_hw
    h, w = hw
    b = windows.shape[0] // (hp * wp // ws // ws)
    x = windows.view(b, hp // ws, wp // ws, ws, ws, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, hp, wp, -1)
    if hp > h or wp > w:
        x = x[:, :h, :w, :].contiguous()
    return x


def vit_block(sd, i: int, x: torch.Tensor, num_heads: int, window_size: int) -> torch.Tensor:
    p = f"{ENC}blocks.{i}."
    c = x.shape[-1]
    shortcut = x
    x = F.layer_norm(x, (c,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-6)
    if i not in GLOBAL_BLOCKS:
        h, w = x.shape[1], x.shape[2]
        x, pad_hw = window_partition(x, window_size)
        x = vit_attention(sd, p + "attn.", x, num_heads)
        x = window_unpartition(x, window_size, pad_hw, (h, w))
    else:
        x = vit_attention(sd, p + "attn.", x, num_heads)
    x = shortcut + x
    y = F.layer_norm(x, (c,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-6)
    y = F.linear(y, sd[p + "mlp.lin1.weight"], sd[p + "mlp.lin1.bias"])
    y = F.linear(F.gelu(y), sd[p + "mlp.lin2.weight"], sd[p + "mlp.lin2.bias"])
    return x + y


def batch_norm(sd, p: str, x: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(
        x,
        sd[p + "running_mean"],
        sd[p + "running_var"],
        sd[p + "weight"],
        sd[p + "bias"],
        training=False,
        eps=1e-5,
    )


def resnet_block(sd, p: str, x: torch.Tensor, stride: int) -> torch.Tensor:
    bottleneck = (p + "conv3.weight") in sd
    if bottleneck:
        out = F.relu(batch_norm(sd, p + "bn1.", F.conv2d(x, sd[p + "conv1.weight"])))
        out = F.conv2d(out, sd[p + "conv2.weight"], stride=stride, padding=1)
        out = F.relu(batch_norm(sd, p + "bn2.", out))
        out = batch_norm(sd, p + "bn3.", F.conv2d(out, sd[p + "conv3.weight"]))
    else:
        out = F.conv2d(x, sd[p + "conv1.weight"], stride=stride, padding=1)
        out = F.relu(batch_norm(sd, p + "bn1.", out))
        out = batch_norm(sd, p + "bn2.", F.conv2d(out, sd[p + "conv2.weight"], padding=1))
    if (p + "downsample.0.weight") in sd:
        identity = F.conv2d(x, sd[p + "downsample.0.weight"], stride=stride)
        identity = batch_norm(sd, p + "downsample.1.", identity)
    else:
        identity = x
    return F.relu(out + identity)


def resnet_features(sd, x: torch.Tensor) -> list[torch.Tensor]:
    x = F.conv2d(x, sd["resnet.stage0.0.weight"], stride=2, padding=3)
    x = F.relu(batch_norm(sd, "resnet.stage0.1.", x))
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    feats = []
    for s in range(1, 5):
        j = 0
        while f"resnet.stage{s}.{j}.conv1.weight" in sd:
            stride = 2 if (s > 1 and j == 0) else 1
            x = resnet_block(sd, f"resnet.stage{s}.{j}.", x, stride)
            j += 1
        feats.append(x)
    return feats


def reshaper(sd, i: int, x: torch.Tensor, size_out: int) -> torch.Tensor:
    p = f"adapters_in.{i}.reshaper."
    j = 0
    size = x.shape[-1]
    while size > size_out:
        x = F.conv2d(x, sd[f"{p}{j}.weight"], sd[f"{p}{j}.bias"], stride=2, padding=1)
        x = F.gelu(layer_norm_2d(x, sd[f"{p}{j + 1}.weight"], sd[f"{p}{j + 1}.bias"]))
        j += 3
        size = x.shape[-1]
    while size < size_out:
        x = F.conv_transpose2d(x, sd[f"{p}{j}.weight"], sd[f"{p}{j}.bias"], stride=2)
        x = F.gelu(layer_norm_2d(x, sd[f"{p}{j + 1}.weight"], sd[f"{p}{j + 1}.bias"]))
        j += 3
        size = x.shape[-1]
    return F.conv2d(x, sd[f"{p}{j}.weight"], sd[f"{p}{j}.bias"])


def upsample4(sd, p: str, x: torch.Tensor) -> torch.Tensor:
    x = F.conv_transpose2d(x, sd[p + "0.weight"], sd[p + "0.bias"], stride=2)
    x = F.gelu(layer_norm_2d(x, sd[p + "1.weight"], sd[p + "1.bias"]))
    return F.conv_transpose2d(x, sd[p + "3.weight"], sd[p + "3.bias"], stride=2)


# ---------------------------------------------------------------------------------------------
# image side


def reference_encode(sd, images: torch.Tensor, *, vit_heads: int, window_size: int = 14):
    """(image_embedding (B, C, 16, 16), multiscale (B, C/8, 64, 64))."""
    x = F.conv2d(
        images, sd[ENC + "patch_embed.proj.weight"], sd[ENC + "patch_embed.proj.bias"], stride=16
    )
    x = x.permute(0, 2, 3, 1) + sd[ENC + "pos_embed"]
    grid = x.shape[1]
    feats = resnet_features(sd, images)
    interm = []
    for i in range(12):
        if i in GLOBAL_BLOCKS:
            stage = i // 3
            x = x + reshaper(sd, stage, feats[stage], grid).permute(0, 2, 3, 1)
        x = vit_block(sd, i, x, vit_heads, window_size)
        if i in (2, 5, 8):
            stage = i // 3
            interm.append(upsample4(sd, f"adapters_bridge.{2 - stage}.", x.permute(0, 3, 1, 2)))
    x = x.permute(0, 3, 1, 2)
    x = F.conv2d(x, sd[ENC + "neck.0.weight"])
    x = layer_norm_2d(x, sd[ENC + "neck.1.weight"], sd[ENC + "neck.1.bias"])
    x = F.conv2d(x, sd[ENC + "neck.2.weight"], padding=1)
    image_embedding = layer_norm_2d(x, sd[ENC + "neck.3.weight"], sd[ENC + "neck.3.bias"])
    multiscale = upsample4(sd, "embedding_encoder.", image_embedding)
    for f in interm:
        multiscale = multiscale + f
    return image_embedding, multiscale


# ---------------------------------------------------------------------------------------------
# prompt side (per image)

PE = "prompt_encoder.sam_prompt_encoder."
DEC = "mask_decoder.sam_mask_decoder."


def pe_encoding(sd, coords: torch.Tensor) -> torch.Tensor:
    coords = 2 * coords - 1
    coords = coords @ sd[PE + "pe_layer.positional_encoding_gaussian_matrix"]
    coords = 2 * math.pi * coords
    return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)


def dense_pe(sd, h: int, w: int) -> torch.Tensor:
    grid = torch.ones((h, w), dtype=torch.float32)
    y_embed = grid.cumsum(dim=0) - 0.5
    x_embed = grid.cumsum(dim=1) - 0.5
    y_embed = y_embed / h
    x_embed = x_embed / w
    pe = pe_encoding(sd, torch.stack([x_embed, y_embed], dim=-1))
    return pe.permute(2, 0, 1).unsqueeze(0)


def prompt_encoder(sd, boxes: torch.Tensor, image_size: int, grid: int):
    bs = boxes.shape[0]
    dim = sd[PE + "no_mask_embed.weight"].shape[1]
    sparse = torch.empty((bs, 0, dim))
    boxes = boxes + 0.5
    coords = boxes.reshape(-1, 2, 2).clone()
    coords[:, :, 0] = coords[:, :, 0] / image_size
    coords[:, :, 1] = coords[:, :, 1] / image_size
    corner = pe_encoding(sd, coords)
    corner[:, 0, :] += sd[PE + "point_embeddings.2.weight"][0]
    corner[:, 1, :] += sd[PE + "point_embeddings.3.weight"][0]
    sparse = torch.cat([sparse, corner], dim=1)
    dense = sd[PE + "no_mask_embed.weight"].reshape(1, -1, 1, 1).expand(bs, -1, grid, grid)
    return sparse, dense


def dec_attention(sd, p: str, q, k, v, num_heads: int):
    q = F.linear(q, sd[p + "q_proj.weight"], sd[p + "q_proj.bias"])
    k = F.linear(k, sd[p + "k_proj.weight"], sd[p + "k_proj.bias"])
    v = F.linear(v, sd[p + "v_proj.weight"], sd[p + "v_proj.bias"])

    def separate(x):
        b, n, c = x.shape
        return x.reshape(b, n, num_heads, c // num_heads).transpose(1, 2)

    q, k, v = separate(q), separate(k), separate(v)
    c_per_head = q.shape[-1]
    attn = q @ k.permute(0, 1, 3, 2)
    attn = attn / math.sqrt(c_per_head)
    attn = torch.softmax(attn, dim=-1)
    out = attn @ v
    b, nh, n, c = out.shape
    out = out.transpose(1, 2).reshape(b, n, nh * c)
    return F.linear(out, sd[p + "out_proj.weight"], sd[p + "out_proj.bias"])


def ln(sd, p: str, x):
    return F.layer_norm(x, (x.shape[-1],), sd[p + "weight"], sd[p + "bias"], 1e-5)


def two_way_transformer(sd, image_embedding, image_pe, point_embedding, num_heads: int):
    p = DEC + "transformer."
    image_embedding = image_embedding.flatten(2).permute(0, 2, 1)
    image_pe = image_pe.flatten(2).permute(0, 2, 1)
    queries, keys = point_embedding, image_embedding
    depth = 0
    while f"{p}layers.{depth}.norm1.weight" in sd:
        depth += 1
    for i in range(depth):
        lp = f"{p}layers.{i}."
        if i == 0:
            queries = dec_attention(sd, lp + "self_attn.", queries, queries, queries, num_heads)
        else:
            q = queries + point_embedding
            queries = queries + dec_attention(sd, lp + "self_attn.", q, q, queries, num_heads)
        queries = ln(sd, lp + "norm1.", queries)
        q = queries + point_embedding
        k = keys + image_pe
        attn_out = dec_attention(sd, lp + "cross_attn_token_to_image.", q, k, keys, num_heads)
        queries = ln(sd, lp + "norm2.", queries + attn_out)
        mlp = F.linear(queries, sd[lp + "mlp.lin1.weight"], sd[lp + "mlp.lin1.bias"])
        mlp = F.linear(F.relu(mlp), sd[lp + "mlp.lin2.weight"], sd[lp + "mlp.lin2.bias"])
        queries = ln(sd, lp + "norm3.", queries + mlp)
        q = queries + point_embedding
        k = keys + image_pe
        attn_out = dec_attention(sd, lp + "cross_attn_image_to_token.", k, q, queries, num_heads)
        keys = ln(sd, lp + "norm4.", keys + attn_out)
    q = queries + point_embedding
    k = keys + image_pe
    attn_out = dec_attention(sd, p + "final_attn_token_to_image.", q, k, keys, num_heads)
    queries = ln(sd, p + "norm_final_attn.", queries + attn_out)
    return queries, keys


def mask_decoder(sd, image_embeddings, image_pe, sparse, dense, multiscale, num_heads: int):
    output_tokens = sd["mask_decoder.med_token.weight"]
    output_tokens = output_tokens.unsqueeze(0).expand(sparse.size(0), -1, -1)
    tokens = torch.cat((output_tokens, sparse), dim=1)
    src = torch.repeat_interleave(image_embeddings, tokens.shape[0], dim=0)
    src = src + dense
    pos_src = torch.repeat_interleave(image_pe, tokens.shape[0], dim=0)
    b, c, h, w = src.shape
    hs, src = two_way_transformer(sd, src, pos_src, tokens, num_heads)
    token_out = hs[:, 0, :]
    src = src.transpose(1, 2).reshape(b, c, h, w)
    u = DEC + "output_upscaling."
    up = F.conv_transpose2d(src, sd[u + "0.weight"], sd[u + "0.bias"], stride=2)
    up = F.gelu(layer_norm_2d(up, sd[u + "1.weight"], sd[u + "1.bias"]))
    up = F.gelu(F.conv_transpose2d(up, sd[u + "3.weight"], sd[u + "3.bias"], stride=2))
    m = "mask_decoder.embedding_maskfeature."
    feat = F.conv2d(up, sd[m + "0.weight"], sd[m + "0.bias"], padding=1)
    feat = F.gelu(layer_norm_2d(feat, sd[m + "1.weight"], sd[m + "1.bias"]))
    feat = F.conv2d(feat, sd[m + "3.weight"], sd[m + "3.bias"], padding=1)
    feat = feat + multiscale
    hyper = token_out
    for j in range(3):
        hp = f"mask_decoder.hf_mlp.layers.{j}."
        hyper = F.linear(hyper, sd[hp + "weight"], sd[hp + "bias"])
        if j < 2:
            hyper = F.relu(hyper)
    b, c, h, w = feat.shape
    masks = (hyper.unsqueeze(1) @ feat.view(b, c, h * w)).view(b, -1, h, w)
    return masks


@torch.no_grad()
def reference_forward(
    sd: dict[str, torch.Tensor],
    images: torch.Tensor,
    boxes: torch.Tensor,
    *,
    vit_heads: int,
    decoder_heads: int,
    window_size: int = 14,
    return_features: bool = False,
):
    """images (B, 3, S, S), boxes (B, 4) -> logits (B, 1, S/4, S/4); loop over images.

    return_features: also return (image_embedding, multiscale).
    """
    image_size = images.shape[-1]
    embeddings, multiscale = reference_encode(
        sd, images, vit_heads=vit_heads, window_size=window_size
    )
    grid = embeddings.shape[-1]
    image_pe = dense_pe(sd, grid, grid)
    out = []
    for i in range(images.shape[0]):
        sparse, dense = prompt_encoder(sd, boxes[i : i + 1], image_size, grid)
        out.append(
            mask_decoder(
                sd,
                embeddings[i : i + 1],
                image_pe,
                sparse,
                dense,
                multiscale[i : i + 1],
                decoder_heads,
            )
        )
    logits = torch.cat(out, dim=0)
    if return_features:
        return logits, (embeddings, multiscale)
    return logits
