"""Train: choose a preset or custom settings, see the layer table, start, watch live, stop.

The training runs in the server's job queue (fmnist.jobs: a child process, one at a time); this
page only submits, polls the job's snapshot in a fragment and renders it. Clicking widgets or
leaving the page does not touch the job.
"""

import time

import streamlit as st

from fmnist import charts
from fmnist.models import ARCHITECTURES, DEFAULTS
from fmnist.runs import config_label
from fmnist.config import OPTIMIZERS, PRESETS, SCHEDULES, TrainConfig, preset_config
from fmnist.training import learning_rate_preview, schedule_steps
from pages import _navigation, _resources, _session

_navigation.ensure_navigation()

B = TrainConfig.BOUNDS
FORM_FIELDS = ("arch", "widths", "cdrop", "ddrop", "epochs", "batch", "opt", "lr", "sched", "warmup", "wd", "ls",
               "flip", "shift", "zoom", "val", "seed", "limit")


def preset_help() -> dict[str, str]:
    """One line per preset, with its epochs read from the preset itself (never stale)."""
    e = {name: values.get("epochs", TrainConfig.epochs) for name, values in PRESETS.items()}
    return {
        "paper": f"The report's model and recipe: {e['paper']} epochs of Adam (about 91% test accuracy).",
        "fast": f"A small modern CNN with one-cycle AdamW: {e['fast']} epochs, good accuracy in minutes.",
        "best": f"Wider modern CNN with augmentation and flip averaging: {e['best']} epochs, the most accurate.",
        "custom": "Every setting by hand.",
    }


def form_values(config: TrainConfig) -> dict:
    """The form's widget values (without the per-preset key prefix) for a configuration."""
    arch = config.arch
    widths = config.widths if config.widths else DEFAULTS[arch]["widths"]
    drop = (config.dropout if isinstance(config.dropout, (list, tuple)) else
            (config.dropout, config.dropout) if config.dropout is not None else DEFAULTS[arch]["dropout"])
    return {"arch": arch, f"widths_{arch}": ",".join(map(str, widths)), f"cdrop_{arch}": float(drop[0]),
            f"ddrop_{arch}": float(drop[-1]), "epochs": int(config.epochs), "batch": int(config.batch_size),
            "opt": config.optimizer, "lr": float(config.learning_rate), "sched": config.schedule,
            "warmup": float(config.warmup_epochs), "wd": float(config.weight_decay),
            "ls": float(config.label_smoothing), "flip": bool(config.augment_flip),
            "shift": int(config.augment_shift), "zoom": float(config.augment_scale),
            "val": float(config.val_fraction), "seed": int(config.seed), "limit": int(config.limit or 0)}


def preset_of(config: dict) -> str:
    return config.get("preset") if config.get("preset") in PRESETS else "custom"


def mirror_job(job_config: dict) -> None:
    """Show a job's own settings in the form (after a reload or a page switch the form had gone
    back to its defaults beside a running training)."""
    config = TrainConfig.from_dict(job_config)
    preset = preset_of(job_config)
    st.session_state["train_preset"] = preset
    for name, value in form_values(config).items():
        st.session_state[f"train_{preset}_{name}"] = value


def settings_ui(locked: bool = False) -> tuple[TrainConfig | None, str | None]:
    """The settings widgets (read-only while a training runs); returns (config, None) or
    (None, a message saying what is wrong)."""
    helps = preset_help()
    st.session_state.setdefault("train_preset", "paper")
    preset = st.radio("Preset", [*PRESETS, "custom"], horizontal=True, key="train_preset", disabled=locked,
                      help="\n\n".join(f"**{k}**: {v}" for k, v in helps.items()))
    st.caption(helps[preset])
    base = TrainConfig(**PRESETS[preset]) if preset in PRESETS else TrainConfig(arch="modern", epochs=5,
                                                                                 batch_size=128)
    k = f"train_{preset}_"  # widget keys per preset: switching presets shows that preset's values
    defaults = form_values(base)
    st.session_state.setdefault(k + "arch", defaults["arch"])

    def key(name: str) -> str:
        """The widget's key, its default put in session state first (the one source of its value)."""
        if k + name not in st.session_state:
            arch_now = st.session_state[k + "arch"]
            fallback = form_values(TrainConfig(arch=arch_now, dropout=None))
            st.session_state[k + name] = defaults.get(name, fallback.get(name))
        return k + name

    with st.expander("Settings" + (" of the running training (locked until it ends)" if locked else ""),
                     expanded=preset == "custom" and not locked):
        c1, c2, c3 = st.columns(3)
        arch = c1.selectbox("Architecture", list(ARCHITECTURES), key=key("arch"), disabled=locked,
                            help="\n\n".join(f"**{a}**: {d}" for a, d in ARCHITECTURES.items()))
        widths_text = c1.text_input("Widths (channels/units)", key=key(f"widths_{arch}"), disabled=locked,
                                    help=f"{len(DEFAULTS[arch]['widths'])} comma-separated numbers, 1-1024")
        conv_drop = c1.slider("Dropout after conv blocks", 0.0, 0.9, step=0.05, key=key(f"cdrop_{arch}"),
                              disabled=locked)
        dense_drop = c1.slider("Dropout after dense layers", 0.0, 0.9, step=0.05, key=key(f"ddrop_{arch}"),
                               disabled=locked)
        epochs = c2.number_input("Epochs", *B["epochs"], key=key("epochs"), disabled=locked)
        batch_size = c2.number_input("Batch size", *B["batch_size"], key=key("batch"), disabled=locked)
        optimizer = c2.selectbox("Optimizer", OPTIMIZERS, key=key("opt"), disabled=locked)
        lr = c2.number_input("Learning rate", float(B["learning_rate"][0]), float(B["learning_rate"][1]),
                             format="%.5f", step=1e-4, key=key("lr"), disabled=locked)
        schedule = c2.selectbox("Schedule", SCHEDULES, key=key("sched"), disabled=locked)
        warmup = c2.number_input("Warm-up epochs (0 = automatic)", *map(float, B["warmup_epochs"]), step=0.5,
                                 key=key("warmup"), disabled=locked,
                                 help="Epochs over which the learning rate climbs to its peak. 0: none for "
                                      "constant and cosine; one-cycle always climbs over the first quarter.")
        weight_decay = c3.number_input("Weight decay", *map(float, B["weight_decay"]), format="%.5f", step=1e-4,
                                       key=key("wd"), disabled=locked)
        smoothing = c3.slider("Label smoothing", *map(float, B["label_smoothing"]), step=0.05, key=key("ls"),
                              disabled=locked)
        flip = c3.checkbox("Augment: random horizontal flips", key=key("flip"), disabled=locked)
        shift = c3.slider("Augment: random shift (pixels)", *B["augment_shift"], key=key("shift"), disabled=locked)
        zoom = c3.slider("Augment: random zoom (±)", *map(float, B["augment_scale"]), step=0.05, key=key("zoom"),
                         disabled=locked, help="0.1 = each image scaled by 0.9-1.1 about its centre")
        val_fraction = c3.slider("Validation fraction", *map(float, B["val_fraction"]), step=0.05, key=key("val"),
                                 disabled=locked)
        seed = c3.number_input("Seed", *B["seed"], key=key("seed"), disabled=locked)
        limit = c3.number_input("Training-set size (0 = all 60,000)", 0, B["limit"][1], step=1000, key=key("limit"),
                                disabled=locked, help=f"A stratified subset, at least {B['limit'][0]} images")
    try:
        widths = [int(w) for w in widths_text.replace(" ", "").split(",") if w]
    except ValueError:
        return None, f"Widths must be whole numbers separated by commas, got {widths_text!r}."
    if limit and limit < B["limit"][0]:
        return None, f"Training-set size must be 0 (all) or at least {B['limit'][0]}."
    # the form's values override the preset (EMA, test-time views and precision stay the preset's)
    values = dict(arch=arch, widths=widths, dropout=[conv_drop, dense_drop], epochs=int(epochs),
                  batch_size=int(batch_size), optimizer=optimizer, learning_rate=float(lr), schedule=schedule,
                  warmup_epochs=float(warmup), weight_decay=float(weight_decay), label_smoothing=float(smoothing),
                  augment_flip=bool(flip), augment_shift=int(shift), augment_scale=float(zoom),
                  val_fraction=float(val_fraction), seed=int(seed), limit=int(limit) or None)
    try:
        return preset_config(preset if preset in PRESETS else None, **values), None
    except ValueError as exc:
        return None, f"Check the settings: {exc}."


def warmup_text(config: TrainConfig) -> str:
    """What the schedule really does at the start, from the same step counts Keras trains with."""
    total, warm = schedule_steps(config, 1000)
    epochs = warm / 1000
    if not warm:
        return "No warm-up: training starts at the peak learning rate."
    how = "automatic for one-cycle: the first quarter of the run" if (
        config.schedule == "onecycle" and not config.warmup_epochs) else "as set"
    return f"Warm-up: the learning rate climbs over the first {epochs:g} epochs ({how})."


def layer_rows(arch: str, widths: tuple, dropout: tuple) -> list[dict]:
    # computed from the architecture's specs without TensorFlow: a server that imports Keras pays
    # for Streamlit's keras.clear_session() and a full garbage collection after every rerun
    from fmnist.models import describe_layers

    return [{"layer": r.name, "type": r.kind, "output shape": r.output_shape, "parameters": r.params}
            for r in describe_layers(arch, widths=list(widths), dropout=list(dropout))]


# Every refresh costs the server, and above all the browser redrawing plotly charts, CPU that the
# training needs (measured on 2 cores: the Train page open with 1 s refreshes of everything halved
# the training's images/s). Progress and metrics refresh every 2 s, the charts every 6 s.
LIVE_REFRESH_S, CHART_REFRESH_S = 2.0, 6.0


def saved_run(snap: dict):
    """The RunInfo a finished or stopped job saved, once its files are there."""
    if not snap["run_dir"]:
        return None
    name = snap["run_dir"].rstrip("/").rsplit("/", 1)[-1]
    return next((r for r in _resources.all_runs() if r.name == name), None)


def progress_text(snap: dict) -> str:
    """The progress bar's line; before the first batch it says what is happening, and for how long."""
    last, start = snap["last_batch"], snap["start"]
    if not last:
        waited = max(0.0, time.time() - (snap["started"] or snap["created"]))
        return f"{(snap['status_message'] or 'starting').capitalize()}... ({waited:.0f} s since Start)"
    frac = last["global_step"] / max(last["total_steps"], 1)
    text = (f"Epoch {last['epoch']}/{start.get('epochs', '?')} · step {last['global_step']:,}/"
            f"{last['total_steps']:,} · ETA {_session.fmt_seconds(last['eta_s'])} · "
            f"{last['images_per_s']:,.0f} images/s")
    if (frac >= 1 or snap["stop_requested"]) and snap["status_message"] not in ("", "training"):
        text += f" · {snap['status_message']}"
    return text


def saved_summary(snap: dict) -> None:
    """What a completed or stopped job saved: its metrics and its full epochs (a stopped run keeps
    the best epoch's weights; the epoch cut short by Stop is not part of it)."""
    run = saved_run(snap)
    if run is None:
        return
    history = _resources.load_run_files(run.path)["history"] or {}
    epochs = [e for e in history.get("epochs", []) if not e.get("partial")]
    s = run.summary
    m = st.columns(4)
    m[0].metric("Test accuracy", f"{s['test_accuracy']:.2%}" if isinstance(s.get("test_accuracy"), float) else "n/a")
    m[1].metric("Validation accuracy", f"{s['best_val_accuracy']:.2%}"
                if isinstance(s.get("best_val_accuracy"), float) else "n/a")
    m[2].metric("Epochs saved", f"{s.get('epochs_done') or 0}" + (f" (best: {s['best_epoch']})"
                                                                   if s.get("best_epoch") else ""))
    m[3].metric("Throughput", f"{s['images_per_s']:,.0f} img/s" if s.get("images_per_s") else "n/a")
    if snap["status"] == "stopped":
        cut = snap["last_batch"]
        st.caption(f"Stopped at epoch {cut.get('epoch', '?')}, step {cut.get('step', '?')}: the saved model is the "
                   f"weights after epoch {s.get('best_epoch') or s.get('epochs_done') or '?'} (the best validation "
                   "accuracy of the full epochs); the interrupted epoch is not part of it.")
    if epochs:
        c1, c2 = st.columns(2)
        c1.plotly_chart(charts.epoch_figure(epochs, "accuracy"), key="saved_epoch_acc")
        c2.plotly_chart(charts.epoch_figure(epochs, "loss"), key="saved_epoch_loss")


def live_panel(job_id: str, active: bool) -> None:
    """Polls the job while it is active; renders progress, charts and the outcome (then the page
    reruns: the buttons, the charts and the run list catch up)."""

    def panel(snap: dict) -> None:
        status, last = snap["status"], snap["last_batch"]
        line = _session.job_line(snap)
        if status == "queued":
            st.info(line, icon=":material/hourglass_top:")
        elif status in ("starting", "running"):
            frac = last["global_step"] / max(last["total_steps"], 1) if last else 0.0
            st.progress(min(frac, 1.0), text=progress_text(snap))
            if snap["stop_requested"]:
                since = time.time() - (snap["stop_requested_at"] or time.time())
                st.warning(f"Stopping ({since:.0f} s): the current batch ends, then the best full epoch is "
                           f"evaluated and saved{' · ' + snap['status_message'] if snap['status_message'] else ''}.")
        elif status == "completed":
            name = (snap["run_dir"] or "").rstrip("/").rsplit("/", 1)[-1]
            st.success(f"{line}. Saved as **{name}**; it is now the current run in Results, Classify and Compare.",
                       icon=":material/check_circle:")
        elif status == "stopped":
            name = (snap["run_dir"] or "").rstrip("/").rsplit("/", 1)[-1]
            st.warning(line + (f". Saved as **{name}**; it is now the current run." if name else ""),
                       icon=":material/stop_circle:")
        elif status == "failed":
            st.error(f"Training failed: {snap['message']}", icon=":material/error:")
        else:
            st.info(line)
        if status in ("completed", "stopped"):
            saved_summary(snap)
        elif last:
            m = st.columns(4)
            m[0].metric("Loss (this epoch)", f"{last['loss']:.4f}", help="Mean over the epoch's batches so far")
            m[1].metric("Accuracy (this epoch)", f"{last['accuracy']:.2%}",
                        help="Mean over the epoch's batches so far (with dropout and augmentation on)")
            val = [e for e in snap["epochs"] if e.get("val_accuracy") is not None and not e.get("partial")]
            m[2].metric("Validation accuracy", f"{val[-1]['val_accuracy']:.2%}" if val else "after epoch 1")
            m[3].metric("Throughput", f"{last['images_per_s']:,.0f} img/s")

    @st.fragment(run_every=CHART_REFRESH_S if active else None)
    def chart_panel():
        job = _session.job_manager().get(job_id)
        if job is None:
            return
        snap = job.snapshot()
        if snap["status"] in ("completed", "stopped"):
            return  # saved_summary draws what was saved
        start = snap["start"]
        if snap["batches"]:
            st.plotly_chart(charts.batch_figure(snap["batches"], start.get("steps_per_epoch")),
                            key="live_batches")
        epochs = [e for e in snap["epochs"] if not e.get("partial")]
        if epochs:
            c1, c2 = st.columns(2)
            c1.plotly_chart(charts.epoch_figure(epochs, "accuracy"), key="live_epoch_acc")
            c2.plotly_chart(charts.epoch_figure(epochs, "loss"), key="live_epoch_loss")

    _session.watch_job(job_id, active, panel, every=LIVE_REFRESH_S)
    chart_panel()


def others_note(own_id: str | None) -> None:
    """Other sessions' trainings, refreshed while there are any (the note used to stay on screen
    after they had ended)."""
    others = [j for j in _session.job_manager().active_jobs() if j.id != own_id]

    @st.fragment(run_every=LIVE_REFRESH_S if others else None)
    def note():
        now = [j for j in _session.job_manager().active_jobs() if j.id != own_id]
        if now:
            st.caption(f"{len(now)} training or sweep job(s) from other sessions are queued or running on this server "
                       "(one runs at a time); a training you start now waits its turn.")
        elif others:
            st.rerun(scope="app")

    note()


st.title("Train a model")
top = st.container()  # the job's buttons, progress and outcome come first once there is a job
job = _session.current_job("train")
snap = job.snapshot() if job is not None else None
busy = bool(snap and snap["active"])
if job is not None and ((busy and st.session_state.get("train_form_job") != job.id)
                        or "train_preset" not in st.session_state):
    mirror_job(snap["config"])  # the form shows the job's own settings (a page switch had reset it)
    st.session_state["train_form_job"] = job.id

config, problem = settings_ui(locked=busy)
if problem:
    st.error(problem)
if config is not None:
    st.caption(f"This configuration is labelled **{config_label(config.to_dict())}** in Results and Compare.")

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
        st.caption(warmup_text(config))

panel_place = top if job is not None else st.container()
buttons = panel_place.container(horizontal=True, vertical_alignment="center")  # never truncated
start_clicked = buttons.button("Start training", type="primary", icon=":material/play_arrow:", key="train_start",
                               disabled=busy or config is None)
stop_clicked = buttons.button("Stop", icon=":material/stop:", key="train_stop", disabled=not busy)
if start_clicked and config is not None and not busy:
    try:
        # the server already holds the data set (the Data page loads it): the child needn't read it
        job = _session.job_manager().submit(config, _session.session_id(), runs_root=_resources.runs_dir(),
                                          data_dir=_resources.data_dir(), dataset=_resources.dataset())
    except (ValueError, RuntimeError) as exc:
        st.error(f"Cannot start: {exc}")
    else:
        _session.own_job(job)
        st.session_state["train_form_job"] = job.id
        st.rerun()
if stop_clicked and job is not None:
    job.stop()
    st.rerun()
if not busy:
    with buttons:
        others_note(job.id if job is not None else None)

if job is not None:
    with panel_place:
        live_panel(job.id, busy)
else:
    st.info("Pick a preset (or custom settings), check the layer table, then press Start. "
            "Training runs on the server: you can use the other pages meanwhile.")
