"""Do the variants keep the shapes and change the colours? The measures the job records in the
manifest and `bench/measure_repaint.py` computes on a finished shard set.

Against the boundaries of the label map the variants were painted from:
- boundary F-score at matched density: an image's edges are its k strongest Sobel pixels, k = the
  number of boundary pixels (a noisy image cannot score by having edges everywhere), matched within
  a tolerance of 0.75 % of the diagonal (BSDS convention, at least 1 px);
- edge contrast: mean Sobel magnitude on boundary pixels / off them (1.0: edges ignore the layout).
Scores come for the variants, the original itself (the ceiling) and an unrelated original (the
floor); `gap_closed` = (variant - unrelated) / (original - unrelated).
- colour distance: mean per-pixel RGB distance (0-255) of a variant to its original and between two
  variants of one image (do new seeds give new colours?).

And, with the class labels (`colour_cue`, in `bench/measure_repaint.py --colour-cue`): how much of the
class a classifier reads from colour alone, on the originals and on the variants. Variants that only
trade one class-typical palette for another (a red car ground, a blue sky behind a plane) still teach
a classifier to read colour; variants whose colours carry no class leave it the shapes.
"""

from __future__ import annotations

import numpy as np
from skimage.filters import sobel
from skimage.morphology import dilation, disk
from skimage.segmentation import find_boundaries


def boundary_f(edges: np.ndarray, boundaries: np.ndarray, tolerance: int) -> float:
    near_boundary = dilation(boundaries, disk(tolerance))
    near_edge = dilation(edges, disk(tolerance))
    precision = (edges & near_boundary).sum() / max(1, edges.sum())
    recall = (boundaries & near_edge).sum() / max(1, boundaries.sum())
    return 0.0 if precision + recall == 0 else float(2 * precision * recall / (precision + recall))


def _strongest(magnitude: np.ndarray, k: int) -> np.ndarray:
    """The k strongest pixels (ties broken by position, so the count is exact)."""
    edges = np.zeros(magnitude.size, bool)
    edges[np.argsort(-magnitude.ravel(), kind="stable")[:k]] = True
    return edges.reshape(magnitude.shape)


def edge_scores(rgb: np.ndarray, boundaries: np.ndarray, tolerance: int) -> tuple[float, float]:
    """(boundary F, edge contrast) of an RGB image (float, 0-255) against boolean boundaries."""
    magnitude = sobel(rgb.mean(-1) / 255.0)
    contrast = magnitude[boundaries].mean() / max(magnitude[~boundaries].mean(), 1e-9)
    return boundary_f(_strongest(magnitude, int(boundaries.sum())), boundaries, tolerance), float(contrast)


def colour_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float32) - b.astype(np.float32), axis=-1).mean())


def measure_variants(originals: np.ndarray, variants: np.ndarray, label_maps: np.ndarray) -> dict:
    """originals uint8 [N, S, S, 3], variants uint8 [N, V, S, S, 3] (V >= 2), label maps [N, S, S]:
    the figures above, averaged over the images whose map has a boundary."""
    n, size = len(originals), originals.shape[1]
    tolerance = max(1, round(0.0075 * size * 2**0.5))
    rows: dict[str, list[tuple[float, float]]] = {"variant": [], "original": [], "unrelated_original": []}
    colour: dict[str, list[float]] = {"variant_vs_original": [], "variant_vs_variant": []}
    for i in range(n):
        boundaries = find_boundaries(label_maps[i], mode="inner")
        if not boundaries.any() or boundaries.all():
            continue
        unrelated = originals[(i + n // 2) % n]
        for row, images in (("original", [originals[i]]), ("unrelated_original", [unrelated]),
                            ("variant", list(variants[i]))):
            rows[row] += [edge_scores(np.asarray(x, np.float32), boundaries, tolerance) for x in images]
        colour["variant_vs_original"] += [colour_distance(v, originals[i]) for v in variants[i]]
        colour["variant_vs_variant"] += [colour_distance(a, b) for j, a in enumerate(variants[i])
                                         for b in variants[i][j + 1:]]
    if not rows["variant"]:
        return {"images": 0}
    f = {k: float(np.mean([s[0] for s in v])) for k, v in rows.items()}
    gap = f["original"] - f["unrelated_original"]
    return {"images": len(rows["original"]), "size": size, "tolerance_px": tolerance, "boundary_f": f,
            "boundary_f_gap_closed": (f["variant"] - f["unrelated_original"]) / gap if gap > 0 else None,
            "edge_contrast": {k: float(np.mean([s[1] for s in v])) for k, v in rows.items()},
            "colour_distance": {k: float(np.mean(v)) for k, v in colour.items()}}


def code_spread(generator, labels, seed: int = 0) -> float:
    """Mean per-pixel colour distance (0-255) between two paintings of the same label maps from two
    prior draws: 0 for a generator that ignores its codes (then every variant is the same image)."""
    import torch

    from .nets import draw_prior

    shape = (labels.shape[0], labels.shape[1] - 1, generator.z_dim)
    draws = [draw_prior(shape, torch.Generator().manual_seed(seed + i)).to(labels.device) for i in (0, 1)]
    mode = generator.training
    generator.eval()  # in train mode spectral norm's power iteration moves between the two calls
    with torch.no_grad():
        a, b = (generator(z, labels) for z in draws)
    generator.train(mode)
    return float(((a - b) * 127.5).norm(dim=1).mean())


QUALITY_LIMIT = 64  # repainted samples measured; up to 4x as many samples are read to find them


def read_repainted(urls: list[str], size: int, limit: int = QUALITY_LIMIT) -> dict[str, np.ndarray] | None:
    """The first `limit` repainted samples of written shards, read back with webdataset (what the
    shards hold: resized to the stored size, JPEG-encoded), at `size` x `size` (label maps by
    nearest, images by bicubic): {"originals", "variants", "label_maps", "labels"} (labels: the
    `cls` field, -1 where a sample has none), or None with fewer than 2 samples of 2 variants."""
    import itertools

    import webdataset as wds
    from PIL import Image

    from manifests import decode_image
    from manifests.imageio import decode_label_map

    def rgb(data: bytes) -> np.ndarray:
        image = decode_image(data, "measure").image.convert("RGB")
        return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC), np.uint8)

    samples = [s for s in itertools.islice(wds.WebDataset(urls, shardshuffle=False), limit * 4)
               if "seg.png" in s][:limit]
    variants = sorted(k for k in (samples[0] if samples else {}) if k.startswith("rp"))
    if len(samples) < 2 or len(variants) < 2:
        return None
    return {"originals": np.stack([rgb(s["jpg"] if "jpg" in s else s["png"]) for s in samples]),
            "variants": np.stack([np.stack([rgb(s[v]) for v in variants]) for s in samples]),
            "label_maps": np.stack([np.asarray(Image.fromarray(decode_label_map(s["seg.png"], "seg.png")).resize(
                (size, size), Image.Resampling.NEAREST)) for s in samples]),
            "labels": np.array([int(s["cls"]) if "cls" in s else -1 for s in samples])}


def proxy_top1(task, originals: np.ndarray, variants: np.ndarray, labels: np.ndarray) -> dict:
    """The proxy task T's top-1 on uint8 originals [B, S, S, 3] and on each variant [B, N, S, S, 3]
    (inputs in [-1, 1], as it trained): {"originals": p, "variants": [p per variant]}."""
    import torch

    from .data import to_unit_range  # torch: only where T is measured

    @torch.no_grad()
    def top1(images: np.ndarray) -> float:
        x = to_unit_range(images)
        predicted = torch.cat([task(x[i:i + 256]).argmax(1) for i in range(0, len(x), 256)])
        return float((predicted.numpy() == labels).mean())

    was_training = task.training
    task.eval()
    result = {"originals": top1(originals), "variants": [top1(variants[:, v]) for v in range(variants.shape[1])]}
    task.train(was_training)
    return result


def measure_shards(urls: list[str], size: int, limit: int = QUALITY_LIMIT, task=None) -> dict:
    """`measure_variants` on the first `limit` repainted samples of written shards (`read_repainted`),
    and with the proxy `task` (a classification set) its top-1 on those originals and variants."""
    read = read_repainted(urls, size, limit)
    if read is None:
        return {"images": 0, "note": "needs at least 2 repainted samples with 2 variants each"}
    result = measure_variants(read["originals"], read["variants"], read["label_maps"])
    if task is not None and (read["labels"] >= 0).all():
        result["proxy_top1"] = proxy_top1(task, read["originals"], read["variants"], read["labels"])
    return result


def colour_histograms(images: np.ndarray, bins: int = 4) -> np.ndarray:
    """uint8 [..., H, W, 3] -> [..., bins**3]: the share of the pixels in each RGB bin."""
    q = images.astype(np.int64) // (256 // bins)
    index = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    flat = index.reshape(-1, index.shape[-2] * index.shape[-1])
    hist = np.stack([np.bincount(row, minlength=bins**3) for row in flat]) / flat.shape[1]
    return hist.reshape(*images.shape[:-3], bins**3)


def _softmax_regression(x: np.ndarray, y: np.ndarray, classes: int, steps: int = 500, lr: float = 0.5,
                        l2: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression by full-batch gradient descent: convex, so a fixed number of
    steps from zero gives the same fit on any machine (up to float rounding)."""
    w, b = np.zeros((x.shape[1], classes)), np.zeros(classes)
    target = np.eye(classes)[y]
    for _ in range(steps):
        logits = x @ w + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        w -= lr * (x.T @ (p - target) / len(x) + l2 * w)
        b -= lr * (p - target).mean(0)
    return w, b


def colour_cue(originals: np.ndarray, variants: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict:
    """Top-1 (%) of a colour-histogram classifier, trained on 80 % of the images and tested on the rest
    (a variant is tested only if its image is): trained on originals and tested on originals, trained
    on variants and tested on variants, and trained on variants and tested on originals (do the
    variants' colours teach the originals' class colours?). originals uint8 [N, S, S, 3], variants
    [N, V, S, S, 3], labels int [N]."""
    classes = int(labels.max()) + 1
    order = np.random.default_rng(seed).permutation(len(labels))
    train, test = order[: int(0.8 * len(order))], order[int(0.8 * len(order)):]
    h_orig, h_var = colour_histograms(originals), colour_histograms(variants)
    n_var = h_var.shape[1]
    flat = lambda h: h.reshape(-1, h.shape[-1])  # noqa: E731

    def fit(x: np.ndarray, y: np.ndarray):
        # Standardised on its own training set; the floor keeps bins its images hardly use (1 % of the
        # pixels) from dominating on a test set that does use them.
        mean, std = x.mean(0), np.maximum(x.std(0), 0.01)
        return mean, std, _softmax_regression((x - mean) / std, y, classes)

    def top1(model, x: np.ndarray, y: np.ndarray) -> float:
        mean, std, (w, b) = model
        return float(((((x - mean) / std) @ w + b).argmax(1) == y).mean() * 100)

    on_orig = fit(h_orig[train], labels[train])
    on_var = fit(flat(h_var[train]), np.repeat(labels[train], n_var))
    return {"images": int(len(test)), "chance": 100.0 / classes,
            "originals_on_originals": top1(on_orig, h_orig[test], labels[test]),
            "variants_on_variants": top1(on_var, flat(h_var[test]), np.repeat(labels[test], n_var)),
            "variants_on_originals": top1(on_var, h_orig[test], labels[test])}
