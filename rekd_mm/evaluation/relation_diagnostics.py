# Copyright (c) rekd_mm contributors. All rights reserved.
"""Diagnostics of ReKD's relation miner on labelled data.

Runs the teacher's momentum encoder over a data set, assigns every embedding
with the checkpoint's prototype bank (the connection step), and reports how
well "same prototype" matches "same class":

- pairwise relation precision: the share of same-prototype pairs whose
  labels agree (how clean the mined positives are);
- pairwise relation recall: the share of same-label pairs that share a
  prototype (how many true relations are mined; an unassigned sample loses
  all of its relations).

It also renders image grids of the most-used prototypes and a histogram of
prototype usage (matplotlib, Agg backend).
"""
import copy
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.device import get_device
from mmengine.registry import init_default_scope
from mmengine.utils import ProgressBar
from mmpretrain.registry import MODELS

from rekd_mm.utils.checkpoint import (PretrainedMismatchError,
                                      load_state_dict_file)
from rekd_mm.utils.outputs import (atomic_json_dump, atomic_write_with,
                                   check_output_dir)
from .knn import build_knn_dataloader

# The files run_relation_diagnostics writes into out_dir.
DIAGNOSTIC_FILES = ('prototype_grid.png', 'prototype_usage.png',
                    'relation_diagnostics.json')

__all__ = [
    'pairwise_relation_scores', 'collect_assignments', 'prototype_summary',
    'render_prototype_grid', 'render_usage_histogram',
    'run_relation_diagnostics'
]


def _pairs(counts: torch.Tensor) -> int:
    counts = counts.long()
    return int((counts * (counts - 1) // 2).sum())


def pairwise_relation_scores(assign: torch.Tensor,
                             labels: torch.Tensor) -> Dict[str, float]:
    """Pairwise precision and recall of prototype relations against labels.

    Computed in closed form from the prototype-by-label contingency table
    ``n_pc``: with prototype sizes ``a_p`` and class sizes ``b_c``,
    ``precision = sum C(n_pc, 2) / sum C(a_p, 2)`` and
    ``recall = sum C(n_pc, 2) / sum C(b_c, 2)``. Samples without a label
    (-1) are left out; unassigned samples (-1) form no relation but their
    same-label pairs count in the recall's denominator.

    Args:
        assign (Tensor): ``(N, )`` prototype index or -1.
        labels (Tensor): ``(N, )`` class index or -1.

    Returns:
        Dict[str, float]: ``relation_precision`` and ``relation_recall``
        (NaN when their denominator is 0) and the three pair counts.
    """
    assign, labels = assign.long().cpu(), labels.long().cpu()
    known = labels >= 0
    assign, labels = assign[known], labels[known]
    same_label = _pairs(torch.bincount(labels)) if labels.numel() else 0
    valid = assign >= 0
    a, y = assign[valid], labels[valid]
    if a.numel():
        num_classes = int(y.max()) + 1
        table = torch.bincount(a * num_classes + y)
        both = _pairs(table)
        same_proto = _pairs(torch.bincount(a))
    else:
        both = same_proto = 0
    nan = float('nan')
    return dict(
        relation_precision=both / same_proto if same_proto else nan,
        relation_recall=both / same_label if same_label else nan,
        pairs_same_prototype=same_proto,
        pairs_same_label=same_label,
        pairs_both=both)


@torch.no_grad()
def collect_assignments(model: torch.nn.Module,
                        dataloader,
                        thumb_size: int = 64,
                        show_progress: bool = True) -> dict:
    """Teacher embeddings' prototype assignments over a data set.

    Args:
        model (nn.Module): A ReKD model with an initialised bank.
        dataloader (DataLoader): Single-view, labelled samples.
        thumb_size (int): Images are kept, de-normalised, as uint8
            thumbnails of at most this side. Defaults to 64.
        show_progress (bool): Progress bar. Defaults to True.

    Returns:
        dict: ``assign``, ``similarity``, ``labels`` (tensors ``(N, )``) and
        ``images`` (uint8 ``(N, H, W, 3)`` RGB array).
    """
    pre = model.data_preprocessor
    assigns, sims, labels, images = [], [], [], []
    bar = ProgressBar(len(dataloader)) if show_progress else None
    was_training = model.training
    model.eval()
    for data in dataloader:
        data = pre(data, False)
        inputs = data['inputs']
        if isinstance(inputs, (list, tuple)):
            inputs = inputs[0]
        assign, sim = model.miner.assign(
            model.mining_space(model.teacher_embed(inputs)))
        assigns.append(assign.cpu())
        sims.append(sim.cpu())
        labels.append(
            torch.tensor([
                int(s.gt_label[0]) if 'gt_label' in s else -1
                for s in data['data_samples']
            ]))
        images.append(_to_thumbnails(inputs, pre, thumb_size))
        if bar is not None:
            bar.update()
    if bar is not None:
        print()
    model.train(was_training)
    return dict(
        assign=torch.cat(assigns),
        similarity=torch.cat(sims),
        labels=torch.cat(labels),
        images=np.concatenate(images))


def _to_thumbnails(inputs: torch.Tensor, pre, size: int) -> np.ndarray:
    """Undo the preprocessor's normalisation; uint8 RGB ``(N, H, W, 3)``."""
    x = inputs.detach().float()
    if getattr(pre, '_enable_normalize', False):
        x = x * pre.std + pre.mean
    if not getattr(pre, '_channel_conversion', False) and x.shape[1] == 3:
        # Not converted by the preprocessor: still OpenCV's BGR.
        x = x.flip(1)
    if max(x.shape[-2:]) > size:
        x = F.interpolate(x, size=size, mode='bilinear', antialias=True)
    x = x.clamp(0, 255).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def prototype_summary(assign: torch.Tensor,
                      labels: torch.Tensor,
                      num_prototypes: int,
                      top: Optional[int] = None) -> List[dict]:
    """The prototypes by decreasing usage, with their majority class.

    Args:
        assign (Tensor): ``(N, )`` prototype index or -1.
        labels (Tensor): ``(N, )`` class index or -1.
        num_prototypes (int): K.
        top (int, optional): Keep the ``top`` most used. Defaults to None.

    Returns:
        List[dict]: ``prototype``, ``count``, ``majority_label`` (-1 when no
        labels) and ``purity`` (share of the majority label among the
        labelled members; NaN when none).
    """
    counts = torch.bincount(assign[assign >= 0], minlength=num_prototypes)
    order = torch.argsort(counts, descending=True, stable=True)
    rows = []
    for proto in order.tolist()[:top]:
        if int(counts[proto]) == 0:
            break
        member_labels = labels[(assign == proto) & (labels >= 0)]
        if member_labels.numel():
            votes = torch.bincount(member_labels)
            majority = int(votes.argmax())
            purity = float(votes[majority]) / member_labels.numel()
        else:
            majority, purity = -1, float('nan')
        rows.append(
            dict(
                prototype=proto,
                count=int(counts[proto]),
                majority_label=majority,
                purity=purity))
    return rows


def render_prototype_grid(images: np.ndarray,
                          assign: torch.Tensor,
                          similarity: torch.Tensor,
                          labels: torch.Tensor,
                          summary: Sequence[dict],
                          path: str,
                          cols: int = 12,
                          class_names: Optional[Sequence[str]] = None) -> str:
    """One row per prototype: its ``cols`` most similar members.

    A green frame marks a member of the row's majority class, a red one a
    member of another class (no frame without labels).

    Args:
        images (np.ndarray): uint8 ``(N, H, W, 3)``.
        assign (Tensor): ``(N, )`` assignments.
        similarity (Tensor): ``(N, )`` similarity to the assigned prototype.
        labels (Tensor): ``(N, )`` labels or -1.
        summary (Sequence[dict]): Rows from :func:`prototype_summary`.
        path (str): Output PNG.
        cols (int): Images per row. Defaults to 12.
        class_names (Sequence[str], optional): Names of the labels.

    Returns:
        str: ``path``.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows = max(len(summary), 1)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(cols * 0.85 + 2.6, rows * 0.95 + 0.6),
        squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    for r, info in enumerate(summary):
        members = torch.nonzero(assign == info['prototype']).flatten()
        members = members[torch.argsort(
            similarity[members], descending=True, stable=True)][:cols]
        majority = info['majority_label']
        name = _label_name(majority, class_names)
        purity = '' if np.isnan(info['purity']) else \
            f'\n{100 * info["purity"]:.0f}% {name}'
        axes[r, 0].set_ylabel(
            f'p{info["prototype"]}  n={info["count"]}{purity}',
            rotation=0,
            ha='right',
            va='center',
            fontsize=8)
        for c, idx in enumerate(members.tolist()):
            ax = axes[r, c]
            ax.imshow(images[idx], interpolation='nearest')
            if int(labels[idx]) >= 0 and majority >= 0:
                color = 'tab:green' if int(
                    labels[idx]) == majority else 'tab:red'
                for spine in ax.spines.values():
                    spine.set_visible(True)
                    spine.set_color(color)
                    spine.set_linewidth(2)
    fig.suptitle(
        'Most-used prototypes (rows) and their most similar members; '
        'frame: green = majority class, red = other',
        fontsize=9)
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, dpi=100))
    plt.close(fig)
    return path


def render_usage_histogram(assign: torch.Tensor, similarity: torch.Tensor,
                           num_prototypes: int, threshold: float,
                           path: str) -> str:
    """Prototype usage (sorted counts) and the best-similarity histogram.

    Args:
        assign (Tensor): ``(N, )`` assignments.
        similarity (Tensor): ``(N, )`` best similarity (before Θ).
        num_prototypes (int): K.
        threshold (float): Θ, drawn on the similarity histogram.
        path (str): Output PNG.

    Returns:
        str: ``path``.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    counts = torch.bincount(
        assign[assign >= 0],
        minlength=num_prototypes).sort(descending=True).values.numpy()
    used = int((counts > 0).sum())
    assigned = int((assign >= 0).sum())
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 3.8))
    ax0.bar(np.arange(num_prototypes), counts, width=1.0, color='tab:blue')
    ax0.set_xlabel('prototype rank (by usage)')
    ax0.set_ylabel('assigned samples')
    ax0.set_title(f'prototype usage: {used}/{num_prototypes} used, '
                  f'{assigned}/{assign.numel()} samples assigned')
    # Fixed bins from min(Θ, data) to 1, so that a narrow distribution
    # (e.g. an untrained teacher) still shows as a visible bar next to Θ.
    low = min(float(threshold), float(similarity.min())) - 0.01
    ax1.hist(
        similarity.clamp(max=1).numpy(),
        bins=np.linspace(low, 1.0, 51),
        color='tab:gray')
    ax1.axvline(
        threshold, color='tab:red', linestyle='--', label=f'Θ = {threshold:g}')
    ax1.set_xlabel('cosine similarity to the nearest prototype')
    ax1.set_ylabel('samples')
    ax1.set_title('nearest-prototype similarity')
    ax1.legend()
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, dpi=100))
    plt.close(fig)
    return path


def _json_safe(obj):
    """NaN (an undefined score) as ``null``: strict JSON has no NaN."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and np.isnan(obj):
        return None
    return obj


def _label_name(label: int, class_names: Optional[Sequence[str]]) -> str:
    if label < 0:
        return '-'
    if class_names and label < len(class_names):
        return str(class_names[label])
    return f'class {label}'


# State that the diagnostics read: the teacher, its momentum encoder, the bank.
_DIAGNOSTIC_PREFIXES = ('teacher.', 'teacher_encoder_k.', 'miner.')


def load_rekd_model(cfg: Config, checkpoint: str) -> torch.nn.Module:
    """Build ``cfg.model`` and load the teacher, its momentum encoder and the
    prototype bank of a checkpoint (``weights_only=True``)."""
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.setdefault('data_preprocessor', cfg.get('data_preprocessor'))
    model = MODELS.build(model_cfg)
    if not hasattr(model, 'miner') or not hasattr(model, 'teacher_embed'):
        raise TypeError(f'{type(model).__name__} has no prototype bank '
                        '(miner) or teacher_embed: a ReKD config is needed')
    # Only the teacher, its momentum encoder and the bank are used: the
    # queues may have another length (e.g. a run with a shorter queue_len).
    own = model.state_dict()
    needed = [k for k in own if k.startswith(_DIAGNOSTIC_PREFIXES)]
    state = load_state_dict_file(checkpoint)
    missing = [k for k in needed if k not in state]
    mismatched = [(k, tuple(state[k].shape), tuple(own[k].shape))
                  for k in needed
                  if k in state and state[k].shape != own[k].shape]
    if missing or mismatched:
        raise PretrainedMismatchError(
            f'checkpoint {checkpoint!r} does not fit the config\'s teacher '
            f'and prototype bank: {len(missing)} keys missing (e.g. '
            f'{missing[:3]}), shape mismatches (key, file, model) '
            f'{mismatched[:3]}; the file has keys like {list(state)[:4]}. '
            'Use the config the checkpoint was trained with (e.g. '
            '--cfg-options model.miner.num_prototypes=K).')
    model.load_state_dict({k: state[k] for k in needed}, strict=False)
    if not model.miner.is_initialized:
        raise RuntimeError(
            f'the prototype bank in {checkpoint!r} was never initialised '
            '(the checkpoint predates RelationMinerHook\'s init_iter / '
            'init_epoch): there are no relations to diagnose')
    return model.to(get_device())


def run_relation_diagnostics(cfg: Union[str, Config],
                             checkpoint: str,
                             out_dir: str,
                             max_samples: Optional[int] = 2000,
                             rows: int = 8,
                             cols: int = 12,
                             seed: int = 0,
                             dataloader: Optional[dict] = None,
                             show_progress: bool = True,
                             verbose: bool = True,
                             force: bool = False) -> dict:
    """Assign a labelled data set with a ReKD checkpoint's bank, score the
    relations against the labels and render the figures.

    Args:
        cfg (str | Config): The ReKD config (or its path).
        checkpoint (str): A ReKD checkpoint with an initialised bank.
        out_dir (str): Where the PNGs and ``relation_diagnostics.json`` go.
        max_samples (int, optional): Random subset of the data set.
            Defaults to 2000; None for all.
        rows (int): Prototypes shown in the grid. Defaults to 8.
        cols (int): Images per prototype. Defaults to 12.
        seed (int): Seed of the subset. Defaults to 0.
        dataloader (dict, optional): Defaults to ``cfg.knn_val_dataloader``.
        show_progress (bool): Progress bar. Defaults to True.
        verbose (bool): Print paths and numbers. Defaults to True.
        force (bool): Replace existing output files. Defaults to False.

    Returns:
        dict: The scores, usage statistics, top prototypes and file paths
        (also written as JSON).
    """
    cfg_path = None
    if not isinstance(cfg, Config):
        cfg_path = cfg
        cfg = Config.fromfile(cfg)
    for name, value, low in (('--rows', rows, 1), ('--cols', cols, 1),
                             ('--max-samples', max_samples, 1)):
        if value is None and name == '--max-samples':
            continue
        if isinstance(value, bool) or not isinstance(value, int) \
                or value < low:
            raise ValueError(f'{name} must be an integer >= {low}, got '
                             f'{value!r}')
    # Before loading anything: the outputs can be written, and replace
    # neither an input nor (without force) an earlier result.
    check_output_dir(
        out_dir,
        DIAGNOSTIC_FILES, [checkpoint, cfg_path],
        force=force,
        arg='--out-dir')
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    loader_cfg = dataloader or cfg.get('knn_val_dataloader', None)
    if loader_cfg is None:
        raise KeyError('the config has no knn_val_dataloader (labelled, '
                       'un-augmented samples); add one or pass dataloader')
    model = load_rekd_model(cfg, checkpoint)
    loader = build_knn_dataloader(loader_cfg, max_samples, seed)
    data = collect_assignments(model, loader, show_progress=show_progress)
    assign, labels = data['assign'], data['labels']
    num_k = model.miner.num_prototypes
    class_names = getattr(loader.dataset, 'CLASSES', None)

    os.makedirs(out_dir, exist_ok=True)
    summary = prototype_summary(assign, labels, num_k, top=rows)
    grid = render_prototype_grid(
        data['images'],
        assign,
        data['similarity'],
        labels,
        summary,
        osp.join(out_dir, 'prototype_grid.png'),
        cols=cols,
        class_names=class_names)
    hist = render_usage_histogram(assign, data['similarity'], num_k,
                                  model.miner.threshold,
                                  osp.join(out_dir, 'prototype_usage.png'))
    result = dict(
        checkpoint=checkpoint,
        num_samples=int(assign.numel()),
        num_prototypes=num_k,
        threshold=model.miner.threshold,
        assigned_ratio=float((assign >= 0).float().mean()),
        prototypes_used=int(
            (torch.bincount(assign[assign >= 0], minlength=num_k) > 0).sum()),
        mean_similarity=float(data['similarity'].mean()),
        top_prototypes=[
            dict(
                info,
                majority_name=_label_name(info['majority_label'], class_names))
            for info in summary
        ],
        figures=dict(prototype_grid=grid, prototype_usage=hist))
    if bool((labels >= 0).any()):
        result.update(pairwise_relation_scores(assign, labels))
    json_path = osp.join(out_dir, 'relation_diagnostics.json')
    result['json'] = json_path
    atomic_json_dump(_json_safe(result), json_path, indent=2)
    if verbose:
        print(f'relation diagnostics of {checkpoint} on '
              f'{result["num_samples"]} samples:')
        for key in ('assigned_ratio', 'prototypes_used', 'mean_similarity',
                    'relation_precision', 'relation_recall'):
            if key in result:
                print(f'  {key:<18s}: {result[key]:.4f}' if isinstance(
                    result[key], float) else f'  {key:<18s}: {result[key]}')
        for path in (grid, hist, json_path):
            print(f'  wrote {path}')
    return result
