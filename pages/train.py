"""Train: choose a preset or custom settings, see the layer table, start, watch live, stop.

The training runs in the server's job queue (fmnist.jobs: a child process, one at a time); this
page only submits, polls the job's snapshot in a fragment and renders it. Clicking widgets or
leaving the page does not touch the job.
"""

import math

import streamlit as st

from fmnist import charts
from fmnist.models import ARCHITECTURES, DEFAULTS
from fmnist.training import OPTIMIZERS, PRESETS, SCHEDULES, TrainConfig, learning_rate_preview
from pages import _state

_state.ensure_navigation()

B = TrainConfig.BOUNDS
PRESET_HELP = {
    "paper": "The report's model and recipe: 15 epochs of Adam (about 91% test accuracy).",
    "fast": "A small modern CNN with one-cycle AdamW: 6 epochs, good accuracy in minutes.",
    "best": "Wider modern CNN with augmentation and flip averaging: 20 epochs, the most accurate.",
    "custom": "Every setting by hand.",
}


def settings_ui() -> tuple[TrainConfig | None, str | None]:
    """The settings widgets; returns (config, None) or (None, a message saying what is wrong)."""
    preset = st.radio("Preset", [*PRESETS, "custom"], horizontal=True, key="train_preset",
                      captions=None, help="\n\n".join(f"**{k}**: {v}" for k, v in PRESET_HELP.items()))
    st.caption(PRESET_HELP[preset])
    base = TrainConfig(**PRESETS[preset]) if preset in PRESETS else TrainConfig(arch="modern", epochs=5,
                                                                                 batch_size=128)
    k = f"train_{preset}_"  # widget keys per preset: switching presets shows that preset's values
    with st.expander("Settings", expanded=preset == "custom"):
        c1, c2, c3 = st.columns(3)
        arch = c1.selectbox("Architecture", list(ARCHITECTURES), index=list(ARCHITECTURES).index(base.arch),
                            key=k + "arch", help="\n\n".join(f"**{a}**: {d}" for a, d in ARCHITECTURES.items()))
        default_widths = base.widths if base.widths and arch == base.arch else DEFAULTS[arch]["widths"]
        widths_text = c1.text_input("Widths (channels/units)", ",".join(map(str, default_widths)),
                                    key=k + f"widths_{arch}",
                                    help=f"{len(DEFAULTS[arch]['widths'])} comma-separated numbers, 1-1024")
        conv_d, dense_d = (base.dropout if isinstance(base.dropout, (list, tuple)) else
                           (base.dropout, base.dropout) if base.dropout is not None else DEFAULTS[arch]["dropout"])
        conv_drop = c1.slider("Dropout after conv blocks", 0.0, 0.9, float(conv_d), 0.05, key=k + f"cdrop_{arch}")
        dense_drop = c1.slider("Dropout after dense layers", 0.0, 0.9, float(dense_d), 0.05,
                               key=k + f"ddrop_{arch}")
        epochs = c2.number_input("Epochs", *B["epochs"], base.epochs, key=k + "epochs")
        batch_size = c2.number_input("Batch size", *B["batch_size"], base.batch_size, key=k + "batch")
        optimizer = c2.selectbox("Optimizer", OPTIMIZERS, index=OPTIMIZERS.index(base.optimizer), key=k + "opt")
        lr = c2.number_input("Learning rate", float(B["learning_rate"][0]), float(B["learning_rate"][1]),
                             float(base.learning_rate), format="%.5f", step=1e-4, key=k + "lr")
        schedule = c2.selectbox("Schedule", SCHEDULES, index=SCHEDULES.index(base.schedule), key=k + "sched")
        warmup = c2.number_input("Warm-up epochs", *map(float, B["warmup_epochs"]), float(base.warmup_epochs),
                                 step=0.5, key=k + "warmup")
        weight_decay = c3.number_input("Weight decay", *map(float, B["weight_decay"]), float(base.weight_decay),
                                       format="%.5f", step=1e-4, key=k + "wd")
        smoothing = c3.slider("Label smoothing", *map(float, B["label_smoothing"]), float(base.label_smoothing),
                              0.05, key=k + "ls")
        flip = c3.checkbox("Augment: random horizontal flips", base.augment_flip, key=k + "flip")
        shift = c3.slider("Augment: random shift (pixels)", *B["augment_shift"], base.augment_shift, key=k + "shift")
        zoom = c3.slider("Augment: random zoom (±)", *map(float, B["augment_scale"]), float(base.augment_scale),
                         0.05, key=k + "zoom", help="0.1 = each image scaled by 0.9-1.1 about its centre")
        val_fraction = c3.slider("Validation fraction", *map(float, B["val_fraction"]), float(base.val_fraction),
                                 0.05, key=k + "val")
        seed = c3.number_input("Seed", *B["seed"], base.seed, key=k + "seed")
        limit = c3.number_input("Training-set size (0 = all 60,000)", 0, B["limit"][1], 0, step=1000,
                                key=k + "limit", help=f"A stratified subset, at least {B['limit'][0]} images")
    try:
        widths = [int(w) for w in widths_text.replace(" ", "").split(",") if w]
    except ValueError:
        return None, f"Widths must be whole numbers separated by commas, got {widths_text!r}."
    if limit and limit < B["limit"][0]:
        return None, f"Training-set size must be 0 (all) or at least {B['limit'][0]}."
    values = dict(arch=arch, widths=widths, dropout=[conv_drop, dense_drop], epochs=int(epochs),
                  batch_size=int(batch_size), optimizer=optimizer, learning_rate=float(lr), schedule=schedule,
                  warmup_epochs=float(warmup), weight_decay=float(weight_decay), label_smoothing=float(smoothing),
                  augment_flip=bool(flip), augment_shift=int(shift), augment_scale=float(zoom),
                  val_fraction=float(val_fraction),
                  seed=int(seed), limit=int(limit) or None, ema=base.ema, tta_flip=base.tta_flip,
                  preset=preset if preset in PRESETS else None)
    try:
        return TrainConfig(**values).validate(), None
    except ValueError as exc:
        return None, f"Check the settings: {exc}."


def layer_rows(arch: str, widths: tuple, dropout: tuple) -> list[dict]:
    # computed from the architecture's specs without TensorFlow: a server that imports Keras pays
    # for Streamlit's keras.clear_session() and a full garbage collection after every rerun
    from fmnist.models import describe_layers

    return [{"layer": r.name, "type": r.kind, "output shape": r.output_shape, "parameters": r.params}
            for r in describe_layers(arch, widths=list(widths), dropout=list(dropout))]


def fmt_seconds(seconds: float) -> str:
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


# Every refresh costs the server, and above all the browser redrawing plotly charts, CPU that the
# training needs (measured on 2 cores: the Train page open with 1 s refreshes of everything halved
# the training's images/s). Progress and metrics refresh every 2 s, the charts every 6 s.
LIVE_REFRESH_S, CHART_REFRESH_S = 2.0, 6.0


def live_panel(job_id: str, active: bool) -> None:
    """Polls the job while it is active; renders progress, charts and the outcome."""

    @st.fragment(run_every=LIVE_REFRESH_S if active else None)
    def panel():
        job = _state.job_manager().get(job_id)
        if job is None:
            return
        snap = job.snapshot()
        status, last, start = snap["status"], snap["last_batch"], snap["start"]
        line = _state.job_line(snap)
        if status == "queued":
            st.info(line, icon=":material/hourglass_top:")
        elif status in ("starting", "running"):
            if last:
                frac = last["global_step"] / max(last["total_steps"], 1)
                st.progress(min(frac, 1.0), text=(
                    f"Epoch {last['epoch']}/{start.get('epochs', '?')} · step {last['global_step']:,}/"
                    f"{last['total_steps']:,} · ETA {fmt_seconds(last['eta_s'])} · "
                    f"{last['images_per_s']:,.0f} images/s"
                    + (f" · {snap['status_message']}" if frac >= 1 and snap["status_message"] else "")))
            else:
                st.progress(0.0, text=snap["status_message"] or "starting...")
            if snap["stop_requested"]:
                st.warning("Stopping at the next batch; the best weights so far are kept.")
        elif status == "completed":
            name = (snap["run_dir"] or "").rstrip("/").rsplit("/", 1)[-1]
            st.success(f"{line}. Saved as **{name}**; it is now in Results, Classify and Compare.",
                       icon=":material/check_circle:")
        elif status == "stopped":
            st.warning(line, icon=":material/stop_circle:")
        elif status == "failed":
            st.error(f"Training failed: {snap['message']}", icon=":material/error:")
        else:
            st.info(line)
        if last:
            m = st.columns(4)
            m[0].metric("Loss (this epoch)", f"{last['loss']:.4f}", help="Mean over the epoch's batches so far")
            m[1].metric("Accuracy (this epoch)", f"{last['accuracy']:.2%}",
                        help="Mean over the epoch's batches so far (with dropout and augmentation on)")
            val = [e for e in snap["epochs"] if e.get("val_accuracy") is not None]
            m[2].metric("Validation accuracy", f"{val[-1]['val_accuracy']:.2%}" if val else "after epoch 1")
            m[3].metric("Throughput", f"{last['images_per_s']:,.0f} img/s")
        if active and not snap["active"]:
            st.rerun(scope="app")  # the job ended: refresh the buttons, the charts and the run list

    @st.fragment(run_every=CHART_REFRESH_S if active else None)
    def chart_panel():
        job = _state.job_manager().get(job_id)
        if job is None:
            return
        snap = job.snapshot()
        start = snap["start"]
        if snap["batches"]:
            st.plotly_chart(charts.batch_figure(snap["batches"], start.get("steps_per_epoch")),
                            key="live_batches")
        if snap["epochs"]:
            c1, c2 = st.columns(2)
            c1.plotly_chart(charts.epoch_figure(snap["epochs"], "accuracy"), key="live_epoch_acc")
            c2.plotly_chart(charts.epoch_figure(snap["epochs"], "loss"), key="live_epoch_loss")

    panel()
    chart_panel()


st.title("Train a model")
job = _state.current_job()
snap = job.snapshot() if job is not None else None
busy = bool(snap and snap["active"])

config, problem = settings_ui()
if problem:
    st.error(problem)

if config is not None:
    with st.expander(f"Layers of the {config.arch} model", expanded=not busy):
        try:
            rows = layer_rows(config.arch, tuple(config.widths), tuple(config.dropout))
        except (ValueError, ImportError) as exc:
            st.error(f"Cannot build this model: {exc}")
        else:
            st.dataframe(rows, hide_index=True, column_config={
                "parameters": st.column_config.NumberColumn(format="localized")})
            st.caption(f"Total parameters: {sum(r['parameters'] for r in rows):,}")
    with st.expander(f"Learning-rate schedule: {config.schedule}", expanded=not busy):
        # also loads plotly.js in the browser now, not in the middle of the training (measured: the
        # first live chart otherwise costs the training a second or two of CPU on 2 cores)
        st.plotly_chart(charts.learning_rate_figure(learning_rate_preview(config)), key="lr_preview")

buttons = st.container(horizontal=True, vertical_alignment="center")  # never truncated
start_clicked = buttons.button("Start training", type="primary", icon=":material/play_arrow:", key="train_start",
                               disabled=busy or config is None)
stop_clicked = buttons.button("Stop", icon=":material/stop:", key="train_stop", disabled=not busy)
if start_clicked and config is not None and not busy:
    try:
        job = _state.job_manager().submit(config, _state.session_id(), runs_root=_state.runs_dir(),
                                          data_dir=_state.data_dir())
    except (ValueError, RuntimeError) as exc:
        st.error(f"Cannot start: {exc}")
    else:
        st.session_state["job_id"] = job.id
        st.query_params["job"] = job.id
        st.rerun()
if stop_clicked and job is not None:
    job.stop()
    st.rerun()
others = [j for j in _state.job_manager().active_jobs() if job is None or j.id != job.id]
if others and not busy:
    buttons.caption(f"{len(others)} training job(s) from other sessions are queued or running on this server; "
                    "yours will wait its turn.")

if job is not None:
    live_panel(job.id, busy)
else:
    st.info("Pick a preset (or custom settings), check the layer table, then press Start. "
            "Training runs on the server: you can use the other pages meanwhile.")
