"""The web app: trame-slicer's slice views over one MRML scene, driven by ``PromptLogic``.

The Slicer module's parts are used as they are: ``PromptLogic`` (session, clicks, undo, reset,
next lesion), ``InteractionQueue`` (one request at a time on a worker thread, clicks placed
meanwhile merged), ``PlaceMode`` (Slicer's place mode on the volume's prompt list), the prompt
list conventions and ``BatchRun`` for saved point lists. Points are placed by Slicer's own
markups interaction in the slice views, exactly as in Slicer; this face only replaces the Qt
widgets by a browser page and the Qt timer by an asyncio task.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any, Dict, List, Optional

import slicer
from trame.app import TrameApp
from trame.widgets import client, html
from trame.widgets import vuetify3 as v3
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories
from trame_slicer.utils import write_client_files_to_dir
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition
from trame_vuetify.ui.vuetify3 import SinglePageWithDrawerLayout

from . import MODULE_DIR  # noqa: F401  (puts SAM3DPromptLib on sys.path)
from SAM3DPromptLib.batch import BatchCase, BatchRun
from SAM3DPromptLib.client import SAM3DError
from SAM3DPromptLib.logic import PromptLogic, user_message
from SAM3DPromptLib.prompts import PlaceMode, PromptError, find_prompt_list, load_prompt_file
from SAM3DPromptLib.scheduler import InteractionQueue
from SAM3DPromptLib.shortcuts import SHORTCUTS

# Window / level presets (Slicer's CT presets; "Auto" is Slicer's automatic window).
WINDOW_PRESETS: Dict[str, Optional[tuple]] = {
    "Auto": None,
    "CT abdomen": (350.0, 40.0),
    "CT lung": (1400.0, -500.0),
    "CT bone": (1000.0, 400.0),
    "CT brain": (100.0, 50.0),
}
POLL_S = 0.05
SLICE_VIEWS = ("Red", "Yellow", "Green")  # axial, sagittal, coronal: Slicer's singleton tags

_SHORTCUT_JS = """
window.addEventListener('keydown', (event) => {
  const tag = (event.target && event.target.tagName) || '';
  if (['INPUT', 'TEXTAREA', 'SELECT'].includes(tag) || !window.trame) { return; }
  const key = (event.ctrlKey || event.metaKey ? 'Ctrl+' : '') + (event.shiftKey ? 'Shift+' : '')
    + (event.key.length === 1 ? event.key.toUpperCase() : event.key);
  const action = %s[key];
  if (action) { event.preventDefault(); window.trame.trigger('%s', [action]); }
});
"""

logger = logging.getLogger("sam3d_web")
IMAGE_SUFFIXES = (".nii.gz", ".seg.nrrd", ".nrrd", ".nhdr", ".nii", ".mha", ".mhd")


def volume_name(path: str) -> str:
    """``/data/case 7.nii.gz`` -> ``case 7``: the node name, and the stem of the files saved."""
    name = Path(path).name
    return next((name[:-len(s)] for s in IMAGE_SUFFIXES if name.lower().endswith(s)), Path(name).stem)


def _write_atomically(storage: Any, node: Any, path: Path, suffix: str) -> None:
    """Slicer's ``storage`` writer for ``node`` into a hidden sibling of ``path`` (same ``suffix``,
    which the writer goes by), renamed onto ``path`` once complete: a reader - the browser's
    download, ``sam3d batch`` - never sees a half-written file, and a failed write leaves the
    previous file as it was."""
    partial = path.with_name(f".{path.name[:-len(suffix)]}.partial{suffix}")
    storage.SetFileName(str(partial))
    if not storage.WriteData(node):
        partial.unlink(missing_ok=True)
        raise PromptError(f"Slicer could not write {path}; is the output folder writable?")
    partial.replace(path)


class PromptWebApp(TrameApp):
    """One browser page, one scene, one :class:`PromptLogic` (clicks go to the volume shown)."""

    def __init__(self, server=None, *, server_url: str, api_key: Optional[str], output_dir: Path,
                 timeout: float = 60.0):
        super().__init__(server)
        self.output_dir = Path(output_dir)
        self.slicer_app = SlicerApp()
        self.scene = self.slicer_app.scene
        register_rca_factories(self.slicer_app.view_manager, self.server)
        self.layout_manager = LayoutManager(self.scene, self.slicer_app.view_manager, self.server)
        axial, coronal, sagittal = (ViewLayoutDefinition.axial_view(), ViewLayoutDefinition.coronal_view(),
                                    ViewLayoutDefinition.sagittal_view())
        self.layout_manager.register_layout_dict({
            "Axial": Layout(LayoutDirection.Vertical, [axial]),
            "Three slices": Layout(LayoutDirection.Horizontal,
                                   [axial, Layout(LayoutDirection.Vertical, [coronal, sagittal])]),
        })
        self.layout_manager.set_layout("Three slices")

        self.logic = PromptLogic(scene=self.scene)
        self.logic.connect(server_url, api_key=api_key, timeout=timeout)
        self.queue = InteractionQueue(self.logic, self._on_done)
        app_logic = self.slicer_app.app_logic
        self.place_mode = PlaceMode(app_logic.GetInteractionNode(), app_logic.GetSelectionNode())
        self.volume_node = None
        self.segmentation_node = None
        self._placing_positive = True
        self._observed: List[Any] = []
        self._batch: Optional[BatchRun] = None

        state = self.state
        state.trame__title = "SAM3DPrompt"
        state.update({"sam3d_status": "Load a volume to start.", "sam3d_error": False,
                      "sam3d_server": "", "sam3d_mode": None, "sam3d_can_undo": False,
                      "sam3d_busy": False, "sam3d_volume": "", "sam3d_window": "Auto",
                      "sam3d_layout": "Three slices", "sam3d_clicks": 0, "sam3d_done": 0,
                      "sam3d_voxels": 0, "sam3d_segment": "", "sam3d_views": {}})
        state.change("sam3d_window")(self._on_window_preset)
        state.change("sam3d_layout")(lambda sam3d_layout, **_: self.layout_manager.set_layout(sam3d_layout))
        self.ctrl.on_server_ready.add(self._start_pump)
        self._build_ui()

    # -- volumes -----------------------------------------------------------------------------
    def load_volume(self, path: str) -> Any:
        """Open a volume file with Slicer's reader and show it; it becomes the input volume."""
        [node] = self.slicer_app.io_manager.load_volumes([str(path)])
        node.SetName(volume_name(str(path)))  # as Slicer names it: the file name without extension
        self._show_volume(node)
        return node

    def _show_volume(self, node) -> None:
        self._stop_placing()
        self.queue.add("release", self.logic.prepare_release)
        self.volume_node = node
        self.segmentation_node = None
        self.logic.set_target(node, None, None)
        self.slicer_app.display_manager.show_volume(node, do_reset_views=True)
        self.state.sam3d_volume = node.GetName()
        self.state.sam3d_segment = ""
        self._on_window_preset(self.state.sam3d_window)
        self._status(f"Loaded {node.GetName()}: press 'Positive' (A) and click on the lesion.")

    async def _upload(self, files: List[Dict[str, Any]]) -> None:
        """Volumes and point lists sent from the browser (a .mrk.json is run as saved prompts)."""
        with TemporaryDirectory() as folder:
            paths = sorted(write_client_files_to_dir(files, folder))
            prompt_files = [p for p in paths if p.lower().endswith(".mrk.json")]
            volumes = [p for p in paths if p not in prompt_files]
            with self.state:
                try:
                    for path in volumes:
                        self.load_volume(path)
                    for path in prompt_files:
                        self.run_prompt_file(path)
                except Exception as error:  # an unreadable file: say so, keep the page alive
                    self._status(f"Could not open the upload: {error}", error=True)

    def _on_window_preset(self, sam3d_window: str = "Auto", **_) -> None:
        display = self.volume_node.GetDisplayNode() if self.volume_node is not None else None
        if display is None:
            return
        preset = WINDOW_PRESETS.get(sam3d_window)
        if preset is None:
            display.AutoWindowLevelOn()
        else:
            display.AutoWindowLevelOff()
            display.SetWindowLevel(*preset)

    def _view_geometry(self) -> Dict[str, Dict[str, list]]:
        """Each slice view's XY (pixels, origin bottom left) -> RAS matrix and size, for the page
        (and tests) to turn a world position into a screen position."""
        views = {}
        for tag in SLICE_VIEWS:
            view = self.slicer_app.view_manager.get_view(tag)
            node = self.scene.GetNodeByID(view.get_view_node_id()) if view is not None else None
            if node is not None:
                matrix = node.GetXYToRAS()
                views[tag] = {"xy_to_ras": [matrix.GetElement(r, c) for r in range(4) for c in range(4)],
                              "size": list(node.GetDimensions()[:2])}
        return views

    # -- clicks ------------------------------------------------------------------------------
    def start_placing(self, positive: bool) -> None:
        """Place mode on the volume's prompt list: each click in a slice view is a prompt."""
        if self.volume_node is None:
            self._status("Load a volume first.", error=True)
            return
        self.segmentation_node, segment_id = self.logic.ensure_target(
            self.volume_node, self.segmentation_node or self.logic.segmentation_node, self.logic.segment_id)
        self.logic.set_target(self.volume_node, self.segmentation_node, segment_id)
        node = self.logic.prompt_list(self.volume_node)
        if node not in self._observed:
            node.AddObserver(slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self._on_point_defined)
            self._observed.append(node)
        self._placing_positive = positive
        self.place_mode.start(node)
        self.state.sam3d_mode = "positive" if positive else "negative"
        self._update_segment_name()

    def _stop_placing(self) -> None:
        self.place_mode.stop()
        self.state.sam3d_mode = None

    def _on_point_defined(self, caller, _event) -> None:
        for click in self.logic.new_clicks(caller, self._placing_positive, self.volume_node):
            self.queue.add_click(click)
        self.state.sam3d_clicks = self.state.sam3d_clicks + 1
        self._update_buttons()

    def _toggle(self, mode: str) -> None:
        if self.place_mode.active and self._placing_positive == (mode == "positive"):
            self._stop_placing()
        else:
            self.start_placing(mode == "positive")

    def undo(self) -> None:
        self.queue.add("undo", self.logic.prepare_undo)

    def reset(self) -> None:
        self.queue.add("reset", lambda: self.logic.reset())

    def next_lesion(self) -> None:
        if self.volume_node is None:
            self._status("Load a volume first.", error=True)
            return
        self.queue.add("next lesion", self._start_next_lesion)

    def _start_next_lesion(self) -> None:
        self.logic.next_lesion()
        self.segmentation_node = self.logic.segmentation_node
        self._update_segment_name()

    def _shortcut(self, action: str) -> None:
        {"positive": lambda: self._toggle("positive"), "negative": lambda: self._toggle("negative"),
         "undo": self.undo, "reset": self.reset, "nextLesion": self.next_lesion}[action]()

    # -- saving and loading ------------------------------------------------------------------
    def save_segmentation(self) -> Path:
        """Write the segmentation as ``<output dir>/<volume>.seg.nrrd`` (Slicer's writer)."""
        if self.segmentation_node is None:
            raise PromptError("Nothing to save yet: click on a lesion first.")
        path = self.output_dir / f"{self.volume_node.GetName()}.seg.nrrd"
        _write_atomically(slicer.vtkMRMLSegmentationStorageNode(), self.segmentation_node, path, ".seg.nrrd")
        return path

    def save_prompts(self) -> Path:
        """Write the volume's prompt list as ``<output dir>/<volume>.mrk.json`` (Slicer's writer:
        the file ``sam3d batch`` and the Slicer module read, every lesion and sign kept)."""
        node = find_prompt_list(self.scene, self.volume_node)
        if node is None or node.GetNumberOfControlPoints() == 0:
            raise PromptError("No points to save yet: click on a lesion first.")
        path = self.output_dir / f"{self.volume_node.GetName()}.mrk.json"
        _write_atomically(slicer.vtkMRMLMarkupsJsonStorageNode(), node, path, ".mrk.json")
        return path

    def run_prompt_file(self, path: str) -> None:
        """Segment the shown volume from a saved point list (one segment per lesion), as the
        Slicer module's batch does."""
        if self.volume_node is None:
            raise PromptError("Load the volume before its saved points.")
        nodes = load_prompt_file(self.scene, path)
        self._batch = BatchRun(self.logic.client, [BatchCase(self.volume_node, nodes)], scene=self.scene)
        self._status(f"Segmenting from the saved points of {Path(path).name}...")

    async def _download(self, what: str):
        with self.state:
            try:
                path = self.save_segmentation() if what == "segmentation" else self.save_prompts()
            except (PromptError, OSError) as error:
                self._status(str(error), error=True)
                return None
            self._status(f"Saved {path}")
        return self.server.protocol.addAttachment(path.read_bytes())

    # -- the queue's pump (the Slicer Widget's QTimer) --------------------------------------------
    def _start_pump(self, **_) -> None:
        asyncio.get_event_loop().create_task(self._pump_forever())

    async def _pump_forever(self) -> None:
        while True:
            views = self._view_geometry()
            if views != self.state.sam3d_views:  # resized, scrolled, zoomed
                with self.state:
                    self.state.sam3d_views = views
            if not self.queue.idle or self._batch is not None:
                with self.state:
                    self.queue.pump()
                    if self._batch is not None:
                        self._batch.pump()
                        if self._batch.finished:
                            self._finish_batch()
                    self.state.sam3d_busy = self.queue.busy or self._batch is not None
            await asyncio.sleep(POLL_S)

    def _finish_batch(self) -> None:
        batch, self._batch = self._batch, None
        for result in batch.results:
            if result.error:
                self._status(result.error, error=True)
            else:
                self._status(f"{result.volume_name}: {len(result.segment_ids)} lesion(s) from saved points, "
                             f"{sum(result.voxels)} voxels")
                self.segmentation_node = result.segmentation_node

    def _on_done(self, name: str, result, error: Optional[BaseException]) -> None:
        if error is not None:
            self._status(user_message(error), error=True)
            if not isinstance(error, (SAM3DError, PromptError)):
                logger.error("SAM3DPrompt %s failed", name, exc_info=error)
        elif name == "connect":
            self.state.sam3d_server = result
            self._status(result)
        elif name == "clicks":
            spacing = self.volume_node.GetSpacing()
            millilitres = result.voxels * spacing[0] * spacing[1] * spacing[2] / 1000.0
            details = "image encoded, " if result.encoder_ran else ""
            self._status(f"{self.state.sam3d_segment}: {result.voxels} voxels ({millilitres:.2f} ml); "
                         f"{details}{result.seconds:.2f} s")
            self.state.sam3d_voxels = result.voxels
        elif name in ("undo", "reset", "next lesion"):
            self._status(f"{name.capitalize()}: done.")
        if name != "release":
            self.state.sam3d_done = self.state.sam3d_done + 1
        self._update_buttons()

    def _update_buttons(self) -> None:
        self.state.sam3d_can_undo = self.logic.can_undo or self.queue.busy
        self._update_segment_name()

    def _update_segment_name(self) -> None:
        node, segment_id = self.logic.segmentation_node, self.logic.segment_id
        segment = node.GetSegmentation().GetSegment(segment_id) if node is not None and segment_id else None
        self.state.sam3d_segment = segment.GetName() if segment is not None else ""

    def _status(self, text: str, error: bool = False) -> None:
        self.state.sam3d_status = text
        self.state.sam3d_error = error

    def _check_server(self) -> None:
        self.queue.add("connect", self.logic.prepare_server_status)

    # -- page --------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        trigger = self.ctrl.trigger_name
        shortcut_map = {key: action for action, key in SHORTCUTS.items()}
        with SinglePageWithDrawerLayout(self.server, full_height=True) as self.ui:
            self.ui.title.set_text("SAM3DPrompt")
            client.Script(_SHORTCUT_JS % (repr(shortcut_map).replace("'", '"'), trigger(self._shortcut)))
            with self.ui.toolbar:
                v3.VSpacer()
                html.Div("{{ sam3d_volume }} {{ sam3d_segment ? '- ' + sam3d_segment : '' }}",
                         classes="mx-4 text-body-2", id="sam3d-target")
                v3.VProgressCircular(v_show="sam3d_busy", indeterminate=True, size=20, classes="mx-2",
                                     id="sam3d-busy")
            with self.ui.drawer:
                self.ui.drawer.width = 330
                with v3.VContainer(classes="d-flex flex-column ga-2"):
                    v3.VFileInput(label="Open volume or saved points (.mrk.json)", multiple=True,
                                  density="compact", id="sam3d-upload", prepend_icon="mdi-folder-open",
                                  change=f"trigger('{trigger(self._upload)}', [$event.target.files])")
                    v3.VSelect(label="Window", v_model=("sam3d_window",), items=(list(WINDOW_PRESETS),),
                               density="compact", id="sam3d-window")
                    v3.VSelect(label="Layout", v_model=("sam3d_layout",), items=(["Three slices", "Axial"],),
                               density="compact", id="sam3d-layout")
                    with v3.VBtnToggle(model_value=("sam3d_mode",), divided=True, density="compact"):
                        v3.VBtn("Positive (A)", value="positive", id="sam3d-positive", color="green",
                                click=(self._toggle, "['positive']"), disabled=("!sam3d_volume",))
                        v3.VBtn("Negative (D)", value="negative", id="sam3d-negative", color="red",
                                click=(self._toggle, "['negative']"), disabled=("!sam3d_volume",))
                    with html.Div(classes="d-flex ga-2"):
                        v3.VBtn("Undo", id="sam3d-undo", click=self.undo, disabled=("!sam3d_can_undo",),
                                density="compact", title=f"shortcut: {SHORTCUTS['undo']}")
                        v3.VBtn("Reset lesion", id="sam3d-reset", click=self.reset,
                                disabled=("!sam3d_can_undo",), density="compact",
                                title=f"shortcut: {SHORTCUTS['reset']}")
                    v3.VBtn("Next lesion (N)", id="sam3d-next", click=self.next_lesion,
                            disabled=("!sam3d_volume",), density="compact")
                    v3.VBtn("Save segmentation (.seg.nrrd)", id="sam3d-save-seg", density="compact",
                            click="utils.download(sam3d_volume + '.seg.nrrd', "
                                  f"trigger('{trigger(self._download)}', ['segmentation']), "
                                  "'application/octet-stream')")
                    v3.VBtn("Save points (.mrk.json)", id="sam3d-save-points", density="compact",
                            click="utils.download(sam3d_volume + '.mrk.json', "
                                  f"trigger('{trigger(self._download)}', ['points']), 'application/json')")
                    v3.VBtn("Check server", id="sam3d-check", click=self._check_server, density="compact")
                    html.Div("{{ sam3d_status }}", id="sam3d-status", classes="text-body-2",
                             style=("{color: sam3d_error ? '#c62828' : 'inherit'}",))
            with self.ui.content:
                client.Style("html { overflow-y: hidden; }")
                self.layout_manager.initialize_layout_grid(self.ui)
