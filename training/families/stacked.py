"""The stacked autoencoder: greedy layer-wise pretraining, then end-to-end fine-tuning."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm import tqdm

from models.stacked import StackedAutoencoder

from ..data import Split, batches
from ..declaration import TrainingSpec, register_training
from ..recipes import Recipe
from ..scoring import evaluate_reconstruction


class StackedRecipe(Recipe):
    """Greedy layer-wise pretraining (Bengio et al., 2006), then end-to-end fine-tuning."""

    model: StackedAutoencoder

    def pretrain(self, split: Split, generator: torch.Generator) -> None:
        """Train each (encoder, decoder) pair in turn for ``--pretrain-epochs`` epochs."""
        for k in range(self.model.depth):
            params = [*self.model.encoders[k].parameters(), *self.model.decoders[k].parameters()]
            opt = torch.optim.Adam(params, lr=self.args.lr)
            for epoch in range(self.args.pretrain_epochs):
                bar = tqdm(
                    batches(split, self.args.batch_size, generator, True, self.world.shard),
                    total=len(split) // self.args.batch_size,
                    desc=f"pretrain layer {k + 1}/{self.model.depth} epoch {epoch + 1}",
                    leave=False,
                    disable=not self.world.is_main,
                )
                for step, (x, _) in enumerate(bar):
                    loss = self.pretrain_step(k, x.to(self.device), opt)
                    bar.set_postfix(loss=f"{loss:.4f}")
                    if self.args.steps_per_epoch and step + 1 >= self.args.steps_per_epoch:
                        break

    def pretrain_step(self, k: int, x: torch.Tensor, opt: torch.optim.Optimizer) -> float:
        """Train pair k as a shallow autoencoder on the (fixed) codes of layers below k."""
        with torch.no_grad():
            h = x.flatten(1)
            for j in range(k):
                h = self.model.encode_layer(j, h)

        def layer_loss(m: StackedAutoencoder) -> torch.Tensor:
            out = m.decode_layer(k, m.encode_layer(k, h))
            if k == 0:
                return F.mse_loss(torch.sigmoid(out), h, reduction="sum") / x.shape[0]
            return F.mse_loss(out, h, reduction="sum") / x.shape[0]

        loss = self.forward(layer_loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()


register_training(TrainingSpec(
    family="stacked-ae", recipe=StackedRecipe, evaluate=evaluate_reconstruction,
    floors=(("psnr", ">=", "pca_psnr+3"),),
    headline=lambda m: f"PSNR {m['psnr']:.2f} dB (PCA-{m['pca_components']}: {m['pca_psnr']:.2f})",
))  # fmt: skip
