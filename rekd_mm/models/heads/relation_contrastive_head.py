# Copyright (c) OpenMMLab. All rights reserved.
from typing import Optional

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule

from mmpretrain.registry import MODELS


@MODELS.register_module()
class RelationContrastiveHead(BaseModule):
    """Relation-wise contrastive head: InfoNCE with mined extra positives.

    For anchor ``i`` the candidates are its own key ``k[i]`` followed by the
    queue ``U``; the positive set is the own key plus every queue slot that
    ``pos_mask[i]`` marks (the relations mined in the teacher's space)::

        logits_i = q_i · [k_i, U] / τ
        L_i = -1/|P(i)| Σ_{p ∈ P(i)} log softmax(logits_i)_p

    With no mined positive this is exactly MoCo v2's InfoNCE (mmpretrain's
    ``ContrastiveHead`` with cross-entropy), which is the student's loss
    before the prototype bank is initialised. mmpretrain's heads take a
    single positive, hence this head.

    Args:
        temperature (float): The temperature τ. Defaults to 0.2.
        loss_weight (float): Weight of the loss. Defaults to 1.0.
        init_cfg (dict, optional): Initialisation config. Defaults to None.
    """

    def __init__(self,
                 temperature: float = 0.2,
                 loss_weight: float = 1.0,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if temperature <= 0:
            raise ValueError(
                f'head.temperature must be > 0, got {temperature}')
        self.temperature = temperature
        self.loss_weight = loss_weight

    def loss(self,
             query: torch.Tensor,
             key: torch.Tensor,
             queue: torch.Tensor,
             pos_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Compute the relation-wise contrastive loss.

        Args:
            query (Tensor): ``(N, D)`` normalised queries.
            key (Tensor): ``(N, D)`` normalised positive keys (no gradient).
            queue (Tensor): ``(D, L)`` normalised queued keys.
            pos_mask (Tensor, optional): ``(N, L)`` bool, True where queue
                slot ``j`` is a mined positive of anchor ``i``. None means no
                mined positive (plain InfoNCE). Defaults to None.

        Returns:
            Tensor: The scalar loss, multiplied by ``loss_weight``.
        """
        # Keys and queue are targets: the loss trains the query encoder only.
        l_pos = torch.einsum('nc,nc->n', query, key.detach()).unsqueeze(-1)
        l_neg = query @ queue.detach()
        logits = torch.cat([l_pos, l_neg], dim=1) / self.temperature
        log_prob = F.log_softmax(logits.float(), dim=1)
        if pos_mask is None:
            loss = -log_prob[:, 0]
        else:
            # Sum over the mined positives plus the own key (column 0).
            mined = (log_prob[:, 1:] * pos_mask).sum(1)
            num_pos = pos_mask.sum(1) + 1
            loss = -(log_prob[:, 0] + mined) / num_pos
        return self.loss_weight * loss.mean()
