"""The training loop: set-up, resume, then epochs of PSS iterations (:meth:`Trainer._train_iteration`).

Exact resume rests on three choices: checkpoints are taken at iteration boundaries, and the data
order and every sample's augmentation are functions of the seed and position
(:mod:`.data_order`).
"""

from __future__ import annotations

import math
import pathlib
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, Collection, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..constraints import parse_constraints
from ..latency import load_tables
from ..resources import ResourceMeter
from ..data import DataBundle, data_fingerprint, load_data
from ..data.device_stage import default_workers, device_stage_for
from ..data.image_files import CorruptImageError
from ..errors import UserError
from ..fileio import output_dir, save_atomic
from ..pretrained import load_pretrained
from ..sampling import Draw, SpaceMap, SubnetSampler, build_space_map, default_cache_dir, make_sampler
from ..supernet import Supernet, create_supernet
from ..supernet_config import SupernetConfig
from .checkpoint import (RUN_ID_NAME, CheckpointSearch, capture_rng_state, find_checkpoint, list_checkpoints,
                         new_run_id, read_run_id, run_record, save_checkpoint, write_run_id)
from .config import TrainConfig, run_summary
from .interrupt import StopSignals, TrainingInterrupted
from ..options import check_bounds
from .run_dir import (DATA_CHANGES_NAME, RunLock, check_data, check_world_size, record_data_change, remove_if_unused,
                      remove_stray_files, resume_command, resume_config, saved_config, set_aside_checkpoints)
from .distributed import DistContext, digest, init_distributed
from .state import TrainState, maps_from_state
from .data_order import EpochView, epoch_order, rank_seed, sample_seeds, without_holdout
from .data_wait import DataWait
from .recipe import cosine_factor, weight_decay_groups
from .run_log import ProgressBar, RunLogger
from .step import SandwichStep, StepResult


@dataclass(frozen=True)
class _Schedule:
    """Iteration counts and the base learning rate of a run, derived from its config and data."""

    iters_per_epoch: int
    total: int  # iterations of the whole run
    lr: float
    warmup: int  # warm-up iterations


def _refuse_lost_run_id(out: pathlib.Path, run_id: Optional[str], search: CheckpointSearch) -> None:
    """A run directory without ``run-id`` whose checkpoints all record one lost that file (an
    older pssnet's run records no id at all): setting them aside and starting again would throw
    the run away, so say how to restore it instead."""
    if run_id is not None or search.checkpoint is not None or not search.rejected:
        return
    recorded = {rejected.run_id for rejected in search.rejected}
    if len(recorded) == 1 and None not in recorded:  # all readable, all of one run
        (found,) = recorded
        raise UserError(f"{out} has no {RUN_ID_NAME} file, but its checkpoints record run id {found}: if they "
                        f"are this run's, restore it with `echo {found} > {out / RUN_ID_NAME}` and resume; "
                        "otherwise train into a new --out")


class Trainer:
    """Trains a supernet as ``config`` says; :meth:`run` returns the run directory.

    :meth:`run` sets up, resumes, then trains epoch by epoch; each iteration is
    :meth:`_train_iteration` (the sampler's draw, the sandwich step, the sampler's update).
    """

    def __init__(self, config: TrainConfig, ctx: Optional[DistContext] = None) -> None:
        self.config = config
        self.ctx = ctx or init_distributed(config.device, config.dist_timeout_minutes)
        self.out = output_dir(config.out)
        self.checkpoint: dict[str, Any] | None = None
        self.run_id: Optional[str] = None  # RUN/run-id; None: a run of an older pssnet, which has none
        self.data_fingerprint = ""  # of the data trained on; set when the data is loaded
        self._accept_data_change = False  # --accept-data-change: resume on changed data, recording it
        self._resume_changes: list[str] = []  # harmless changes a --resume asked for
        self._last_save = time.monotonic()
        self._data_wait = DataWait(self.ctx.device)  # its stage is set once the data is loaded

    # -- set-up ---------------------------------------------------------------------------------
    def _note(self, message: str) -> None:
        if self.ctx.is_main:
            print(message, file=sys.stderr, flush=True)

    def _prepare_run_dir(self, resume: bool, given: Optional[Collection[tuple[str, ...]]]) -> None:
        """Find what the run directory holds and decide: resume, start (again), or refuse.

        A directory without a complete checkpoint (a run killed before its first one) may always
        be started again, or resumed from the beginning under its saved settings."""
        if self.ctx.is_main:
            for path in remove_stray_files(self.out):
                self._note(f"note: removed {path}, left by an interrupted write")
        self.run_id = read_run_id(self.out)
        search = find_checkpoint(self.out, self.run_id)  # this run's own, holding the iteration it is named for
        _refuse_lost_run_id(self.out, self.run_id, search)
        self.checkpoint = search.checkpoint
        if resume:
            saved = self.checkpoint["config"] if self.checkpoint is not None else saved_config(self.out)
            if saved is None:
                raise UserError(f"{self.out} has no checkpoint to resume from; run without --resume to start")
            if self.checkpoint is None:
                self._note(f"note: {self.out} has no complete checkpoint; starting the run from the beginning")
            else:
                SupernetConfig.from_dict(self.checkpoint["model_config"])  # a retired layout: one line
                check_world_size(self.checkpoint, self.ctx.world_size, self.out)
            # Reported once the data is known to be the run's (a moved --data is one of them).
            self.config, self._resume_changes = resume_config(saved, self.config, given)
        elif (self.out / "final.pt").exists() or self.checkpoint is not None:
            raise UserError(f"{self.out} already holds a run; pass --resume to continue it or choose a new --out")
        elif (self.out / "config.json").exists() or (self.out / "checkpoints").is_dir():
            self._note(f"note: {self.out} holds a run with no complete checkpoint; starting it again")
        if self.ctx.is_main:
            for note in set_aside_checkpoints(search.rejected):
                self._note(note)
        if self.checkpoint is None:  # a run that starts (again) from iteration 0 gets a new id
            self.run_id = new_run_id()

    def _seed(self) -> None:
        c = self.config
        if c.threads:
            torch.set_num_threads(c.threads)
        torch.manual_seed(c.seed)
        np.random.seed(c.seed % 2**32)

    def _build_model(self, data: DataBundle) -> Supernet:
        c = self.config
        small = c.small_input if c.small_input is not None else data.image_size <= 64
        resolutions = tuple(c.resolutions) if c.resolutions else None
        return create_supernet(c.arch, data.num_classes, data.in_chans, small, resolutions, tuple(c.width_range),
                               dropout=c.dropout)

    def _build_maps(self, constraints, meter: ResourceMeter, net: Supernet) -> dict[str, SpaceMap]:
        c = self.config.sampler
        if self.checkpoint is not None and self.checkpoint.get("maps"):
            return maps_from_state(self.checkpoint["maps"])
        cache = default_cache_dir() if c.map_cache is None else (c.map_cache or None)
        maps = {}
        for constraint in constraints:
            maps[constraint.kind] = build_space_map(net.space, constraint, meter, c.map_samples,
                                                    self.config.seed, cache)
            message = maps[constraint.kind].unreachable_message()
            if message and self.ctx.is_main:
                print(f"warning: {message}", file=sys.stderr)
            thin = maps[constraint.kind].spread_filled_message()
            if thin and self.ctx.is_main:
                print(f"space map: {thin}")
        if maps and not any(m.reachable_targets for m in maps.values()):  # past check_reachable: rare edges
            raise UserError(f"no budget target of {', '.join(x.text for x in constraints)} was reached by the "
                            "subnets drawn for the space map; choose targets inside the space's range, or TYPE:auto")
        return maps

    def _schedule(self, num_train: int) -> _Schedule:
        c, world = self.config, self.ctx.world_size
        batch = c.process_batch(world)
        iters_per_epoch = num_train // (batch * world)
        if iters_per_epoch < 1:
            raise UserError(f"{num_train} training images are fewer than one batch of "
                            f"{batch} x {world} processes; lower --batch-size")
        total = iters_per_epoch * c.epochs if c.max_iters is None else min(c.max_iters, iters_per_epoch * c.epochs)
        lr = c.recipe.lr if c.recipe.lr is not None else c.recipe.lr_per_1024 * batch * world / 1024
        return _Schedule(iters_per_epoch, total, lr, int(round(c.recipe.warmup_epochs * iters_per_epoch)))

    def _build_state(self, data: DataBundle, holdout: Optional[dict[str, int]], plan: _Schedule) -> TrainState:
        """Model, budgets, sampler and optimiser, freshly initialised from the seed."""
        c, device = self.config, self.ctx.device
        net = self._build_model(data)
        if c.init and self.checkpoint is None:  # a resumed run continues from its own weights
            report = load_pretrained(net, c.init)
            if self.ctx.is_main:
                print(report.summary())
        luts = load_tables(c.luts)
        meter = ResourceMeter(net.layout, luts)
        constraints = parse_constraints(c.constraints, meter, net.space)
        maps = self._build_maps(constraints, meter, net) if c.sampler.name == "pss" else {}
        s = c.sampler
        sampler = make_sampler(s.name, net.space, constraints, maps, meter, c.seed, pool_size=s.pool_size,
                               ema=s.ema, p0=s.p0, p1=s.p1, t0=s.t0, t1=s.t1)
        net.to(device)
        if c.channels_last:
            net.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(weight_decay_groups(net, c.recipe.weight_decay), lr=plan.lr,
                                    momentum=c.recipe.momentum, nesterov=c.recipe.nesterov)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                      lambda it: cosine_factor(it, plan.total, plan.warmup))
        scaler = torch.amp.GradScaler("cuda") if c.amp and device.type == "cuda" else None
        return TrainState(c, net, optimizer, scheduler, scaler, sampler, constraints, luts, maps, holdout)

    def _sandwich_step(self, state: TrainState) -> SandwichStep:
        c, ctx = self.config, self.ctx
        model: nn.Module = state.net
        if ctx.enabled:
            model = nn.parallel.DistributedDataParallel(
                state.net, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
        return SandwichStep(model, state.net, state.optimizer, c.recipe.label_smoothing, c.amp, c.channels_last,
                            state.scaler, ctx.mean if ctx.enabled else None)

    def _resolved_config(self, state: TrainState, plan: _Schedule) -> dict[str, Any]:
        """config.json: the settings and what they resolved to."""
        return {**self.config.to_dict(), "resolved": {
            "lr": plan.lr, "iterations": plan.total, "iterations_per_epoch": plan.iters_per_epoch,
            "world_size": self.ctx.world_size, "num_workers": self._workers(),
            "batch_per_process": self.config.process_batch(self.ctx.world_size),
            "global_batch": self.config.global_batch(self.ctx.world_size), "model_config": state.net.config.to_dict(),
            "data_fingerprint": self.data_fingerprint,
            "constraints": [x.to_dict() for x in state.constraints],
            "reachable_targets": {k: list(m.reachable_targets) for k, m in state.maps.items()}}}

    def _loader(self, dataset: Dataset, epoch: int, start_batch: int, iters_per_epoch: int) -> DataLoader:
        c, ctx = self.config, self.ctx
        batch = c.process_batch(ctx.world_size)
        order = epoch_order(len(dataset), c.seed, epoch)[: iters_per_epoch * batch * ctx.world_size]
        grid = order.reshape(iters_per_epoch, ctx.world_size, batch)
        positions = np.arange(order.size).reshape(grid.shape)
        indices = grid[start_batch:, ctx.rank].ravel()
        seeds = sample_seeds(c.seed, epoch, positions[start_batch:, ctx.rank].ravel())
        view = EpochView(dataset, indices, seeds)
        generator = torch.Generator().manual_seed(c.seed * 7919 + epoch)  # keeps the global RNG untouched
        stage = self._data_wait.stage
        return DataLoader(view, batch_size=batch, shuffle=False, num_workers=self._workers(),
                          pin_memory=ctx.device.type == "cuda", drop_last=True, generator=generator,
                          persistent_workers=False, collate_fn=stage.collate if stage is not None else None)

    def _workers(self) -> int:
        c = self.config
        return c.num_workers if c.num_workers is not None else default_workers(self.ctx.device)

    # -- main loop -----------------------------------------------------------------------------
    def run(self, resume: bool = False, given: Optional[Collection[tuple[str, ...]]] = None,
            accept_data_change: bool = False) -> pathlib.Path:
        """Train (or, with ``resume``, continue) the run in ``config.out``; returns its directory.

        ``given``: the option paths the user asked for (``("recipe", "lr")``), which a resume
        compares with the run's own settings; None: every option that differs from its default.
        ``accept_data_change``: resume on data that no longer matches the run's fingerprint (files
        removed or replaced after a bad image), recording the change instead of refusing."""
        check_bounds(self.config)
        if accept_data_change and not resume:
            raise UserError("--accept-data-change continues a run on changed data; use it with --resume")
        if resume and not self.out.is_dir():
            raise UserError(f"{self.out} has no checkpoint to resume from; run without --resume to start")
        self._accept_data_change = accept_data_change
        created = not self.out.exists()
        lock = RunLock(self.out).acquire() if self.ctx.is_main else None
        try:
            return self._run(resume, given)
        except BaseException:
            if lock is not None and created:  # e.g. bad data: leave no empty run directory behind
                remove_if_unused(self.out)
            raise
        finally:
            if lock is not None:
                lock.release()

    def _run(self, resume: bool, given: Optional[Collection[tuple[str, ...]]]) -> pathlib.Path:
        self._prepare_run_dir(resume, given)
        self.config.validate()
        self._seed()
        data, data_changed = self._load_data()
        train_set, holdout = without_holdout(data.train, self.config.holdout, self.config.seed)
        plan = self._schedule(len(train_set))
        state = self._build_state(data, holdout, plan)
        if self.ctx.is_main:
            print(run_summary(self.config, self.ctx.world_size, plan.lr, state.constraints), flush=True)
        torch.manual_seed(rank_seed(self.config.seed, self.ctx.rank))
        if self.checkpoint is not None:
            if data_changed:
                self._check_model_fits(state.net)
            state.load_state_dict(self.checkpoint, self.ctx.rank)

        step = self._sandwich_step(state)
        logger = RunLogger(self.out, self.config, self.ctx, state.iteration)
        if self.ctx.is_main:
            self._start_log(logger, state, plan, data_changed)
        state.net.train()
        self._last_save = time.monotonic()
        self._train_epochs(state, step, train_set, plan, logger)

        self._check_ranks(state.sampler, state.sequence.hex(), logger)
        if self.ctx.is_main:
            save_atomic({**run_record(state.state_dict()).to_dict(), "run_id": self.run_id}, self.out / "final.pt")
            logger.close(state.iteration)
        return self.out

    def _load_data(self) -> tuple[DataBundle, bool]:
        """The run's data, checked against a resumed run's fingerprint; True: it changed, and
        ``--accept-data-change`` lets it in."""
        data = load_data(self.config.data, self.config.image_size)
        self.data_fingerprint = data_fingerprint(data)
        changed = False
        if self.checkpoint is not None:
            changed = check_data(self.checkpoint, self.data_fingerprint, self.config.data, self._accept_data_change)
        if self._resume_changes:
            self._note(f"resume: {', '.join(self._resume_changes)}")
        if self.ctx.is_main and data.description:
            print(f"data: {data.description}")
        self._data_wait.stage = device_stage_for(data.device_stage, data.name, self.ctx.device,
                                                 self.config.decode_on_device)
        return data, changed

    def _check_model_fits(self, net: Supernet) -> None:
        """Changed data must still fit the run's model (the same classes, channels and input size)."""
        saved = SupernetConfig.from_dict(self.checkpoint["model_config"]).to_dict()
        now = net.config.to_dict()
        differ = [f"{key} {saved[key]} -> {now.get(key)}" for key in saved if saved[key] != now.get(key)]
        if differ:
            raise UserError(f"the data at {self.config.data} needs another model than this run's "
                            f"({', '.join(differ)}); --accept-data-change continues a run on the same data with "
                            "files removed or replaced, not on other data; train it into a new --out")

    def _start_log(self, logger: RunLogger, state: TrainState, plan: _Schedule, data_changed: bool) -> None:
        """Rank 0, before the first iteration: the id of a run that starts, config.json, and the
        record of a data change that ``--accept-data-change`` let in."""
        if self.checkpoint is None:
            write_run_id(self.out, self.run_id)
        logger.write_config(self._resolved_config(state, plan))
        if data_changed:
            row = record_data_change(self.out, self.checkpoint, self.data_fingerprint, self.config.data)
            logger.record(row)
            self._note(f"resume: the data at {self.config.data} differs from the data this run trained on until "
                       f"iteration {row['iteration']}; continuing on it (--accept-data-change), recorded in "
                       f"{self.out / DATA_CHANGES_NAME} and metrics.jsonl")

    def _train_epochs(self, state: TrainState, step: SandwichStep, train_set: Dataset, plan: _Schedule,
                      logger: RunLogger) -> None:
        """Train until ``plan.total``; a stop signal or an image that fails to decode ends the
        run with a checkpoint of the last finished iteration."""
        with StopSignals() as signals:
            try:
                while state.iteration < plan.total:
                    self._train_epoch(state, step, train_set, plan, logger, signals)
            except TrainingInterrupted:
                logger.close_writer()
                raise
            except CorruptImageError as exc:
                logger.close_writer()
                raise self._unreadable_image(state, exc) from None

    def _unreadable_image(self, state: TrainState, exc: CorruptImageError) -> UserError:
        """The error of a training image that fails to decode mid-run (the folder check before
        training decodes a sample of them): the iterations done since the last checkpoint are
        saved first, and the message says how to go on once the file is removed or replaced."""
        if self.ctx.enabled:  # the other ranks are not here to join a checkpoint's collectives
            saved = list_checkpoints(self.out)
            kept = f"the last checkpoint is {saved[-1].name}" if saved else "no checkpoint was written yet"
        elif state.iteration == 0:
            kept = "no iteration was finished"
        else:
            self._checkpoint(state)
            kept = f"checkpoint written after iteration {state.iteration}"
        how = resume_command(self.out, self.ctx.world_size) + " --accept-data-change"
        return UserError(f"{exc} ({kept}), then continue with: {how}")

    def _train_epoch(self, state: TrainState, step: SandwichStep, train_set: Dataset, plan: _Schedule,
                     logger: "RunLogger", signals: StopSignals) -> None:
        """Train the rest of the current epoch (all of it, unless resumed or cut by ``plan.total``)."""
        c = self.config
        epoch, start_batch = divmod(state.iteration, plan.iters_per_epoch)
        loader = self._loader(train_set, epoch, start_batch, plan.iters_per_epoch)
        batches = min(plan.iters_per_epoch - start_batch, plan.total - state.iteration)
        bar = ProgressBar(c.progress and self.ctx.is_main, f"epoch {epoch + 1}/{c.epochs}", start_batch,
                          start_batch + batches)
        for images, labels in self._data_wait.batches(loader):
            draw, result = self._train_iteration(state, step, images, labels, plan.total)
            epoch_end = state.iteration % plan.iters_per_epoch == 0
            last = state.iteration == plan.total
            bar.advance(result.acc_largest, logger.step(state, epoch, result, draw, force=epoch_end or last,
                                                        data_wait=self._data_wait.take))
            self._sync_point(state, epoch_end or last, signals)
            batches -= 1
            if batches == 0:
                break
        bar.close()
        if state.iteration % plan.iters_per_epoch == 0 or state.iteration == plan.total:
            logger.epoch_end(state.iteration, epoch, state.sampler)

    def _train_iteration(self, state: TrainState, step: SandwichStep, images: torch.Tensor,
                         labels: torch.Tensor, total: int) -> tuple[Draw, StepResult]:
        """The PSS decision and one sandwich step: the sampler draws a subnet for this point of
        training, the step trains it (with the largest and smallest), and its score goes back to
        the sampler's pools."""
        draw = state.sampler.sample(state.iteration / total)
        images = images.to(self.ctx.device, non_blocking=True)
        labels = labels.to(self.ctx.device, non_blocking=True)
        result = step(images, labels, draw.subnet)
        self._check_finite(result, state.iteration + 1)
        state.sampler.update(draw, result.score)
        with warnings.catch_warnings():
            # With AMP the gradient scaler skips the optimizer step of an iteration whose gradients
            # overflowed (the first few, while it finds its scale); the schedule still advances one
            # iteration, as intended, and torch's warning about that would only alarm the user.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            state.scheduler.step()
        state.advance(draw.subnet)
        return draw, result

    def _check_finite(self, result: StepResult, iteration: int) -> None:
        """Stop a diverged run before its weights reach a checkpoint (losses are the same on all ranks)."""
        losses = (result.loss_largest, result.loss_sampled, result.loss_smallest)
        bad = next((x for x in losses if not math.isfinite(x)), None)
        if bad is None:
            return
        saved = list_checkpoints(self.out)
        kept = f"the last good checkpoint is {saved[-1]}" if saved else "no checkpoint was written yet"
        raise UserError(f"the loss became {bad} at iteration {iteration}; {kept}; train again (new --out) "
                        "with a lower --lr or more --warmup-epochs")

    def _sync_point(self, state: TrainState, force: bool, signals: StopSignals) -> None:
        """After each iteration all ranks agree whether to checkpoint (``force``: epoch end, last
        iteration; or one is due) and whether a signal asks them to stop, which they do together."""
        c = self.config.checkpoint
        due = force or bool(c.every_iters and state.iteration % c.every_iters == 0) or \
            time.monotonic() - self._last_save >= c.every_minutes * 60
        due, signum = self.ctx.maximum([int(due), signals.signum])
        if due or signum:
            self._checkpoint(state)
        if signum:
            raise TrainingInterrupted(signum, f"stopped by signal {signum} after iteration {state.iteration} "
                                      "(checkpoint written); continue with: "
                                      + resume_command(self.out, self.ctx.world_size))

    def _checkpoint(self, state: TrainState) -> None:
        """Write a checkpoint (rank 0) with the run's process count and global batch (a resume must
        match them) and, when there are several processes, every rank's RNG states."""
        world = self.ctx.world_size
        rngs = self.ctx.gather(capture_rng_state()) if self.ctx.enabled else None
        if self.ctx.is_main:
            content = {**state.state_dict(rngs), "world_size": world, "global_batch": self.config.global_batch(world),
                       "data_fingerprint": self.data_fingerprint, "run_id": self.run_id}
            save_checkpoint(self.out, content, self.config.checkpoint.keep)
        self._last_save = time.monotonic()

    def _check_ranks(self, sampler: SubnetSampler, sequence_digest: str, logger: "RunLogger") -> None:
        """All ranks must end with the same pools and the same subnet sequence."""
        pools = self.ctx.gather(digest(sampler.pools_state()))
        sequences = self.ctx.gather(sequence_digest)
        if self.ctx.is_main:
            logger.record({"event": "ranks", "pool_digests": pools, "sequence_digests": sequences})
        if len(set(pools)) > 1 or len(set(sequences)) > 1:
            raise RuntimeError(f"ranks diverged: pool digests {pools}, subnet-sequence digests {sequences}")


