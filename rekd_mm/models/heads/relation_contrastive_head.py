# Copyright (c) rekd_mm contributors. All rights reserved.
from typing import Optional, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmpretrain.registry import MODELS


@MODELS.register_module()
class RelationContrastiveHead(BaseModule):
    """Relation-wise contrastive head: InfoNCE with mined extra positives.

    For anchor ``i`` the candidates are its own key ``k[i]`` followed by the
    queue ``U``; the positive set ``P(i)`` is the own key plus every queue
    slot that ``pos_mask[i]`` marks (the relations mined in the teacher's
    space). With ``p = softmax(q_i · [k_i, U] / τ)`` and weights ``w`` over
    ``P(i)`` that sum to 1, the two ways to combine the positives are
    (supervised contrastive learning's L_out and L_in)::

        'mean_log':  L_i = -Σ_{p ∈ P(i)} w_p log p_p
        'log_sum':   L_i = -log Σ_{p ∈ P(i)} w_p p_p

    The weights: with ``own_key_weight=None`` every positive weighs the same
    (``w = 1/|P(i)|``, the contract's form); with ``own_key_weight=α`` the
    own key weighs ``α`` and the ``M`` mined positives share ``1 - α``
    equally. ``mined_scale`` (a warm-up factor in [0, 1] passed by the
    algorithm) multiplies the mined positives' total weight, the own key
    taking the rest. Both forms are exactly MoCo v2's InfoNCE (mmpretrain's
    ``ContrastiveHead`` with cross-entropy) for an anchor with no mined
    positive, which is the student's loss before the prototype bank exists.
    mmpretrain's heads take a single positive, hence this head.

    Why both forms (docs/method.md, "Student loss"): with ~400 positives per
    anchor, ``'mean_log'`` asks for a uniform distribution over all of them
    and the own key's term all but vanishes; ``'log_sum'`` only asks that the
    positives together hold the probability mass, so wrong or redundant
    positives cost little.

    Args:
        temperature (float): The temperature τ. Defaults to 0.2.
        loss_weight (float): Weight of the loss. Defaults to 1.0.
        pos_combine (str): ``'mean_log'`` or ``'log_sum'``. Defaults to
            ``'mean_log'`` (the contract's form; the quality regime's configs
            choose ``'log_sum'`` by measurement).
        own_key_weight (float, optional): α in (0, 1], or None for equal
            weights. Defaults to None.
        init_cfg (dict, optional): Initialisation config. Defaults to None.
    """

    POS_COMBINE = ('mean_log', 'log_sum')

    def __init__(self,
                 temperature: float = 0.2,
                 loss_weight: float = 1.0,
                 pos_combine: str = 'mean_log',
                 own_key_weight: Optional[float] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if temperature <= 0:
            raise ValueError(
                f'model.head.temperature must be > 0, got {temperature}')
        if pos_combine not in self.POS_COMBINE:
            raise ValueError(f'model.head.pos_combine must be one of '
                             f'{self.POS_COMBINE}, got {pos_combine!r}')
        if own_key_weight is not None and not 0 < own_key_weight <= 1:
            raise ValueError('model.head.own_key_weight must be None or in '
                             f'(0, 1], got {own_key_weight}')
        self.temperature = temperature
        self.loss_weight = loss_weight
        self.pos_combine = pos_combine
        self.own_key_weight = own_key_weight

    def positive_weights(
            self,
            pos_mask: torch.Tensor,
            mined_scale: Union[float, torch.Tensor] = 1.0) -> torch.Tensor:
        """Weights of the own key (column 0) and the queue slots.

        Args:
            pos_mask (Tensor): ``(N, L)`` bool mask of mined positives.
            mined_scale (float | Tensor): Factor on the mined positives'
                total weight. Defaults to 1.0.

        Returns:
            Tensor: ``(N, 1 + L)`` float weights; each row sums to 1 and is
            zero outside the positive set.
        """
        mask = pos_mask.float()
        num_mined = mask.sum(1, keepdim=True)
        if self.own_key_weight is None:
            mined_share = num_mined / (num_mined + 1)
        else:
            mined_share = torch.where(num_mined > 0, 1 - self.own_key_weight,
                                      torch.zeros_like(num_mined))
        mined_share = mined_share * mined_scale
        own = 1 - mined_share
        mined = mask * (mined_share / num_mined.clamp(min=1))
        return torch.cat([own, mined], dim=1)

    def loss(self,
             query: torch.Tensor,
             key: torch.Tensor,
             queue: torch.Tensor,
             pos_mask: Optional[torch.Tensor] = None,
             mined_scale: Union[float, torch.Tensor] = 1.0) -> torch.Tensor:
        """Compute the relation-wise contrastive loss.

        Args:
            query (Tensor): ``(N, D)`` normalised queries.
            key (Tensor): ``(N, D)`` normalised positive keys (no gradient).
            queue (Tensor): ``(D, L)`` normalised queued keys.
            pos_mask (Tensor, optional): ``(N, L)`` bool, True where queue
                slot ``j`` is a mined positive of anchor ``i``. None means no
                mined positive (plain InfoNCE). Defaults to None.
            mined_scale (float | Tensor): Warm-up factor on the mined
                positives' weight, see the class docstring. Defaults to 1.0.

        Returns:
            Tensor: The scalar loss, multiplied by ``loss_weight``.
        """
        # Keys and queue are targets: the loss trains the query encoder only.
        # Logits in float32: autocast would run the products in fp16/bf16
        # even on float32 inputs (~0.02 logit resolution at τ = 0.2 in bf16).
        with torch.autocast(device_type=query.device.type, enabled=False):
            l_pos = torch.einsum('nc,nc->n', query.float(),
                                 key.detach().float()).unsqueeze(-1)
            l_neg = query.float() @ queue.detach().float()
            logits = torch.cat([l_pos, l_neg], dim=1) / self.temperature
            log_prob = F.log_softmax(logits, dim=1)
        if pos_mask is None:
            loss = -log_prob[:, 0]
        else:
            weights = self.positive_weights(pos_mask, mined_scale)
            if self.pos_combine == 'mean_log':
                loss = -(weights * log_prob).sum(1)
            else:
                # log Σ w p, computed as a masked logsumexp for stability;
                # zero weights contribute exp(-inf) = 0.
                log_w = torch.where(weights > 0, weights.log(),
                                    torch.full_like(weights, float('-inf')))
                loss = -torch.logsumexp(log_prob + log_w, dim=1)
        return self.loss_weight * loss.mean()
