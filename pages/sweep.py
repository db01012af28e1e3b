"""Sweep: a small Optuna search over the training's settings, run as a background job.

The sweep runs in the server's job queue (fmnist.jobs, kind "sweep": one training or sweep at a
time, in a child process; it survives reloads and second tabs like a training). Every finished
trial is a normal verified run. The table, the best value and Optuna's own figures come from the
study's storage (fmnist.sweep); this page submits, polls and renders.
"""

import time

import streamlit as st

from fmnist.config import PRESETS, TrainConfig
from fmnist.jobs import SWEEP_TRIALS, sweep_progress
from fmnist.sweep import SEARCH_SPACE, best_run, default_storage, list_studies, study_figures, study_rows
from pages import _navigation, _resources, _selection, _session

_navigation.ensure_navigation()

B = TrainConfig.BOUNDS
DEFAULTS = {"trials": 6, "preset": "fast", "epochs": 2, "limit": 3000}  # a few minutes on 2 cores
MAX_EPOCHS = 20  # per trial, in the app (the command line allows TrainConfig's bound)
LIVE_REFRESH_S, FIGURE_REFRESH_S = 2.0, 6.0
PICK_KEY = "sweep_study_pick"
FIGURES = (("history", "Optimisation history"), ("parallel", "Parallel coordinates"),
           ("importance", "Parameter importances"))


def storage() -> str:
    """The app's study storage: the default one under the runs folder (the CLI's default too)."""
    return default_storage(_resources.runs_dir())


def search_space_rows() -> list[dict]:
    """fmnist.sweep.SEARCH_SPACE as table rows."""
    rows = []
    for name, spec in SEARCH_SPACE.items():
        values = spec.get("choices")
        span = (", ".join(map(str, values)) if values is not None
                else f"{spec.get('low')} to {spec.get('high')}" + (" (log scale)" if spec.get("log") else ""))
        rows.append({"setting": name, "values": span, "what it changes": spec.get("help", "")})
    return rows


def settings_ui(locked: bool) -> dict:
    """The sweep's widgets (read-only while this session's sweep runs); returns their values."""
    for name, value in {**DEFAULTS, "study": f"app-{time.strftime('%Y%m%d-%H%M')}"}.items():
        st.session_state.setdefault(f"sweep_{name}", value)  # the one source of each widget's value
    c1, c2, c3, c4, c5 = st.columns([1, 1, 1, 1.3, 2])
    trials = c1.number_input("Trials", *SWEEP_TRIALS, key="sweep_trials", disabled=locked,
                             help="Trainings the sweep runs; pruned ones end early.")
    preset = c2.selectbox("Preset", list(PRESETS), key="sweep_preset", disabled=locked,
                          help="The base configuration; every trial changes the settings of the search space.")
    epochs = c3.number_input("Epochs per trial", 1, MAX_EPOCHS, key="sweep_epochs", disabled=locked)
    limit = c4.number_input("Training images per trial", 1000, B["limit"][1], step=1000, key="sweep_limit",
                            disabled=locked, help="A stratified subset of the 60,000")
    study = c5.text_input("Study", key="sweep_study", disabled=locked, max_chars=64,
                          help="An existing study's name adds trials to it (with the same preset, epochs and "
                               "images); a new name starts a new study.")
    return {"trials": int(trials), "preset": preset, "epochs": int(epochs), "limit": int(limit),
            "study": study.strip()}


def mirror_job(config: dict) -> None:
    """Show a sweep's own settings in the form (after a reload the form had gone back to its defaults)."""
    for name in ("trials", "preset", "epochs", "limit", "study"):
        if config.get(name) is not None:
            st.session_state[f"sweep_{name}"] = config[name]


def progress_text(snap: dict, progress: dict) -> str:
    """The progress bar's line: trials done, the trial in flight, the ETA."""
    text = f"{progress['done']}/{progress['total']} trials done"
    current, last = progress["current"], snap["last_batch"]
    if current is not None:
        text += f" · trial {current['number']}"
        if last.get("epoch"):
            text += f", epoch {last['epoch']}/{snap['config'].get('epochs') or '?'}"
    elif snap["status_message"]:
        text += f" · {snap['status_message']}"
    return text + f" · ETA {_session.fmt_seconds(progress['eta_s'])}"


def job_panel(job_id: str, active: bool) -> None:
    """This session's sweep: progress while it runs, its outcome once it ends (then the page reruns:
    the buttons and the run list catch up)."""

    def panel(snap: dict) -> None:
        progress = sweep_progress(snap)
        line = _session.job_line(snap)
        status = snap["status"]
        if status == "queued":
            st.info(line, icon=":material/hourglass_top:")
        elif status in ("starting", "running"):
            st.progress(progress["fraction"], text=progress_text(snap, progress))
            if snap["stop_requested"]:
                st.warning("Stopping: the trial in flight ends at its next batch and is marked in the study; "
                           "finished trials are kept.")
        elif status == "completed":
            st.success(line, icon=":material/check_circle:")
        elif status == "stopped":
            st.warning(line, icon=":material/stop_circle:")
        elif status == "failed":
            st.error(f"Sweep failed: {snap['message']}", icon=":material/error:")
        else:
            st.info(line)

    _session.watch_job(job_id, active, panel, every=LIVE_REFRESH_S)


def study_ui(studies: list[str]) -> str | None:
    """The study picker; returns the chosen study (None when there is none yet)."""
    if not studies:
        st.info("No studies yet: start a sweep above.")
        return None
    if st.session_state.get(PICK_KEY) not in studies:
        st.session_state[PICK_KEY] = studies[-1]
    return st.selectbox("Study", studies, key=PICK_KEY,
                        help="The studies in this server's storage (also those run with `python -m fmnist sweep`).")


def table_rows(rows: list[dict]) -> list[dict]:
    """Trials for the table: one column per parameter, the run by its name."""
    out = []
    for row in rows:
        value = row.get("value")
        item = {"trial": row.get("number"), "state": row.get("state"),
                "val. accuracy": value * 100 if isinstance(value, (int, float)) else None}
        item.update({name: (f"{v:.3g}" if isinstance(v, float) else str(v)) for name, v in (row.get("params") or {}).items()})
        item["seconds"] = round(row["seconds"]) if isinstance(row.get("seconds"), (int, float)) else None
        item["run"] = str(row["run"]).rstrip("/").rsplit("/", 1)[-1] if row.get("run") else ""
        out.append(item)
    return out


@st.cache_resource(max_entries=8, show_spinner=False)
def _figures_cached(study: str, where: str, finished: tuple) -> dict:
    return study_figures(study, where)


def study_panel(study: str, where: str, live: bool) -> None:
    """The study's trials, best value and Optuna's figures, refreshed while its sweep runs."""

    @st.fragment(run_every=LIVE_REFRESH_S if live else None)
    def trials_table():
        try:
            rows = study_rows(study, where)
        except Exception as exc:  # a study another process deleted, a storage that cannot be read
            st.error(f"Cannot read study {study!r}: {exc}")
            return
        complete = [r for r in rows if r.get("state") == "COMPLETE" and isinstance(r.get("value"), (int, float))]
        best = max(complete, key=lambda r: r["value"]) if complete else None
        m = st.columns(4)
        m[0].metric("Trials", f"{len(rows)}")
        m[1].metric("Completed / pruned", f"{len(complete)} / {sum(r.get('state') == 'PRUNED' for r in rows)}")
        m[2].metric("Best validation accuracy", f"{best['value']:.2%}" if best else "n/a")
        m[3].metric("Best trial", f"#{best['number']}" if best else "n/a")
        if rows:
            st.dataframe(table_rows(rows), hide_index=True, key="sweep_trials_table", column_config={
                "val. accuracy": st.column_config.NumberColumn(format="%.2f%%"),
                "seconds": st.column_config.NumberColumn(format="%d s")})

    @st.fragment(run_every=FIGURE_REFRESH_S if live else None)
    def figures():
        try:
            rows = study_rows(study, where)
            finished = tuple((r.get("number"), r.get("state"), r.get("value")) for r in rows
                             if r.get("state") in ("COMPLETE", "PRUNED"))
            drawn = _figures_cached(study, where, finished)
        except Exception as exc:
            st.error(f"Cannot draw study {study!r}: {exc}")
            return
        shown = [(key, title) for key, title in FIGURES if key in drawn]
        if not shown:
            st.caption("Optuna's figures appear once trials have finished (parameter importances need a few).")
            return
        tabs = st.tabs([title for _, title in shown])
        for tab, (key, _) in zip(tabs, shown):
            tab.plotly_chart(drawn[key], key=f"sweep_fig_{key}")
        missing = [title for key, title in FIGURES if key not in drawn]
        if missing:
            st.caption(f"Not drawn yet ({', '.join(missing).lower()}): too few finished trials.")

    trials_table()
    figures()


def use_best_run(study: str, where: str) -> None:
    """Button callback: the study's best run becomes the sidebar's current run."""
    try:
        best = best_run(study, where)
    except Exception as exc:
        st.session_state["sweep_best_note"] = ("error", f"Cannot read study {study!r}: {exc}")
        return
    if best is None:
        st.session_state["sweep_best_note"] = ("warning", "This study has no completed trial yet.")
    elif not _selection.choose_run(best.name):
        st.session_state["sweep_best_note"] = ("warning", f"The best run {best.name} is not a usable run in "
                                                          f"{_resources.runs_dir()} (moved, or failing verification).")
    else:
        st.session_state["sweep_best_note"] = ("success", f"**{best.name}** is now the current run: Results, "
                                                          "Classify and Compare open it.")


st.title("Sweep hyperparameters")
st.caption("An Optuna study tries settings of the training one trial at a time, prunes trials whose validation "
           "accuracy falls behind, and keeps every finished trial as a run. The defaults finish in a few minutes.")
job = _session.current_job("sweep")
snap = job.snapshot() if job is not None else None
busy = bool(snap and snap["active"])
with st.expander("What a trial changes (the search space)"):
    st.dataframe(search_space_rows(), hide_index=True)
    st.caption("Everything else comes from the preset. The value Optuna maximises is the validation accuracy.")
if busy and st.session_state.get("sweep_form_job") != job.id:
    mirror_job(snap["config"])
    st.session_state["sweep_form_job"] = job.id
values = settings_ui(locked=busy)
buttons = st.container(horizontal=True, vertical_alignment="center")
start_clicked = buttons.button("Start sweep", type="primary", icon=":material/play_arrow:", key="sweep_start",
                               disabled=busy)
stop_clicked = buttons.button("Stop", icon=":material/stop:", key="sweep_stop", disabled=not busy)
dataset = _resources.dataset() if start_clicked and not busy else None  # None: it said why
if dataset is not None:
    try:
        # the server already holds the data set: the sweep's child needn't read it again
        job = _session.job_manager().submit_sweep(
            _session.session_id(), values["trials"], preset=values["preset"], epochs=values["epochs"],
            limit=values["limit"], study=values["study"] or None, storage=storage(),
            runs_root=_resources.runs_dir(), data_dir=_resources.data_dir(), dataset=dataset)
    except (ValueError, RuntimeError) as exc:
        st.error(f"Cannot start: {exc}")
    else:
        _session.own_job(job)
        st.session_state["sweep_form_job"] = job.id
        st.session_state.pop(PICK_KEY, None)  # show the new sweep's study
        st.rerun()
if stop_clicked and job is not None:
    job.stop()
    st.rerun()
if job is not None:
    job_panel(job.id, busy)

st.subheader("Studies")
where = storage()
try:
    studies = list_studies(runs_root=_resources.runs_dir())  # none yet: no storage file, no studies
except Exception as exc:  # an unreadable storage file: one line, the rest of the page still works
    st.error(f"Cannot read the study storage {where}: {exc}")
    studies = []
job_study = snap["sweep"].get("study") if snap is not None else None  # created when the sweep was queued
if job_study in studies and PICK_KEY not in st.session_state:
    st.session_state[PICK_KEY] = job_study
study = study_ui(studies)
if study is not None:
    st.button("Use the best run", icon=":material/star:", key="sweep_use_best", on_click=use_best_run,
              args=(study, where), help="Make the best trial's run the current model in the sidebar.")
    note = st.session_state.pop("sweep_best_note", None)
    if note:
        getattr(st, note[0])(note[1])
    st.caption("Trials' runs are saved without the OpenVINO export, to keep trials short: Classify answers them "
               "with Keras, or export one with `python -m fmnist export RUN`.")
    study_panel(study, where, live=busy and study == job_study)
