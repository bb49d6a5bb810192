"""SAM3D Prompt: click-prompted 3D tumor segmentation through a SAM3D inference server.

Module, Widget (Qt only), Logic (all the work, no Qt: ``SAM3DPromptLib.logic.PromptLogic``)
and the in-Slicer test. The server is ``sam3d serve`` (see the extension's README).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import unittest
from typing import Optional

import numpy as np
import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from SAM3DPromptLib.batch import BatchRun, has_saved_prompts, load_cases
from SAM3DPromptLib.box import roi_defined
from SAM3DPromptLib.client import SAM3DClient, SAM3DError
from SAM3DPromptLib.logic import PromptLogic, user_message
from SAM3DPromptLib.prompts import PlaceMode, PromptError
from SAM3DPromptLib.scheduler import InteractionQueue
from SAM3DPromptLib.shortcuts import SHORTCUTS  # active while the module is shown

LIBRARY = "SAM3DPromptLib"
DEFAULT_SERVER_URL = "http://127.0.0.1:8000"
SERVER_URL_SETTING = "SAM3DPrompt/ServerURL"  # the API key is never stored
TIMEOUT_SETTING = "SAM3DPrompt/RequestTimeoutSeconds"
CA_BUNDLE_SETTING = "SAM3DPrompt/CABundle"  # certificate file for an https server
PROMPTS_FOLDER_SETTING = "SAM3DPrompt/PromptsFolder"
BUSY_INDICATOR_DELAY_S = 2.0
# A box edited outside a drag (e.g. the Markups module's size fields) is sent once it rests.
BOX_EDIT_DELAY_MS = 500
POLL_INTERVAL_MS = 50
ERROR_STYLE = "color: #c62828"
OK_STYLE = ""


#
# Module
#
class SAM3DPrompt(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SAM3D Prompt")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Markups", "Segmentations"]
        self.parent.contributors = ["SAM3DPrompt developers (SAM3DPrompt project)"]
        self.parent.helpText = _(
            "Click on a tumor and a 3D segment appears; add negative clicks to remove leaks and "
            "positive clicks to add missed parts; <b>Box</b> draws a box around the lesion (in a "
            "slice view: a box on that slice). The model runs in a SAM3D server "
            "(<code>sam3d serve</code>), locally or on a GPU machine.<br>"
            "Shortcuts: <b>A</b> positive point, <b>D</b> negative point, <b>Ctrl+Z</b> undo, "
            "<b>Shift+R</b> reset the lesion (undo brings it back), <b>N</b> next lesion.<br>"
            "See the extension's README for how to start the server.")
        self.parent.acknowledgementText = _(
            "The method follows 3DSAM-adapter (Gong et al., Medical Image Analysis 2024) built on "
            "Segment Anything (Kirillov et al., 2023).")


#
# Parameter node
#
@parameterNodeWrapper
class SAM3DPromptParameterNode:
    """inputVolume: the volume clicked on; segmentation / segmentID: where the lesion is written."""

    inputVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    segmentID: str


#
# Widget
#
class SAM3DPromptWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Qt only: every action goes through ``self.queue`` to the Logic; network work runs on a
    worker thread and results are applied on the main thread by a timer."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.queue = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._shortcuts = []
        self._target = (None, None, None)
        self._connection = (None, None, None, None)
        self._batch = None
        self._placeMode = None
        self._placingPositive = True
        self._boxRoi = None  # the box ROI observed (the input volume's)
        self._placingBoxRoi = None  # the box ROI being placed by the Box button
        self._boxDragging = False
        self._boxNote: Optional[str] = None  # a note on how a box drawn in a slice view was read

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SAM3DPrompt.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = SAM3DPromptLogic()
        # The timer runs only while a queue has work (see _wake / onTimer).
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_INTERVAL_MS)
        self.timer.connect("timeout()", self.onTimer)
        self.queue = InteractionQueue(self.logic, self.onJobDone, on_work=self._wake)
        self.boxEditTimer = qt.QTimer()
        self.boxEditTimer.setSingleShot(True)
        self.boxEditTimer.setInterval(BOX_EDIT_DELAY_MS)
        self.boxEditTimer.connect("timeout()", self._queueBox)
        appLogic = slicer.app.applicationLogic()
        self._placeMode = PlaceMode(appLogic.GetInteractionNode(), appLogic.GetSelectionNode())

        settings = qt.QSettings()
        self.ui.serverUrlLineEdit.text = settings.value(SERVER_URL_SETTING, DEFAULT_SERVER_URL)
        self.ui.timeoutSpinBox.value = int(settings.value(TIMEOUT_SETTING, 60))
        self.ui.caBundlePathLineEdit.currentPath = settings.value(CA_BUNDLE_SETTING, "")
        self._boxToolTip = self.ui.boxButton.toolTip
        self.ui.promptsFolderButton.directory = settings.value(PROMPTS_FOLDER_SETTING, qt.QDir.homePath())
        self.ui.busyProgressBar.setVisible(False)
        self.ui.batchProgressBar.setVisible(False)
        self._setTooltipsWithShortcuts()

        self.ui.serverUrlLineEdit.connect("editingFinished()", self.onServerUrlEdited)
        self.ui.timeoutSpinBox.connect("valueChanged(int)", self.onTimeoutChanged)
        self.ui.caBundlePathLineEdit.connect("currentPathChanged(QString)", self.onCABundleChanged)
        self.ui.testConnectionButton.connect("clicked()", self.onTestConnection)
        self.ui.positiveButton.connect("toggled(bool)", lambda on: self.onPlaceToggled(True, on))
        self.ui.negativeButton.connect("toggled(bool)", lambda on: self.onPlaceToggled(False, on))
        self.ui.boxButton.connect("clicked()", self.onBox)
        self.ui.undoButton.connect("clicked()", self.onUndo)
        self.ui.resetButton.connect("clicked()", self.onReset)
        self.ui.nextLesionButton.connect("clicked()", self.onNextLesion)
        self.ui.segmentComboBox.connect("currentIndexChanged(int)", self.onSegmentSelected)
        self.ui.savePromptsButton.connect("clicked()", self.onSavePrompts)
        self.ui.runBatchButton.connect("clicked()", self.onRunBatch)
        self.ui.cancelBatchButton.connect("clicked()", self.onCancelBatch)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeRemovedEvent, self.onNodeRemoved)
        interactionNode = slicer.app.applicationLogic().GetInteractionNode()
        self.addObserver(interactionNode, interactionNode.InteractionModeChangedEvent,
                         self.onInteractionModeChanged)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.timer.stop()
        self.boxEditTimer.stop()
        self._removeShortcuts()
        self._stopPlacing()
        self.removeObservers()
        if self._batch is not None:
            self._batch.cancel()
        if self.logic is not None:
            release = self.logic.prepare_release()
            threading.Thread(target=release.run, daemon=True).start()

    def onReload(self) -> None:
        """Reload and Test: SAM3DPromptLib is read again too (not only this file)."""
        for name in [name for name in sys.modules if name == LIBRARY or name.startswith(LIBRARY + ".")]:
            del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self) -> None:
        self.initializeParameterNode()
        self._installShortcuts()

    def exit(self) -> None:
        self._removeShortcuts()
        self._stopPlacing()
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            if self.hasObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified):
                self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        self._stopPlacing()
        self.boxEditTimer.stop()
        self._observeBoxRoi(None)
        self.setParameterNode(None)
        self.queue.discard()  # nothing may write into nodes that are going away
        if self._batch is not None:
            self._batch.cancel()
            self._batch = None
            self._updateBatchButtons()
        release = self.logic.prepare_release()
        threading.Thread(target=release.run, daemon=True).start()
        self.logic.set_target(None, None, None)
        self._target = (None, None, None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # -- parameter node -----------------------------------------------------------------------
    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolume and not firstVolume.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = firstVolume

    def setParameterNode(self, parameterNode) -> None:
        if self._parameterNode:
            if self._parameterNodeGuiTag is not None:
                self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
                self._parameterNodeGuiTag = None
            if self.hasObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified):
                self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        self._observeSegmentation()
        self._fillSegmentComboBox()
        self._queueTargetIfChanged()
        self._updateButtons()

    def _observeSegmentation(self) -> None:
        segmentation = self._parameterNode.segmentation if self._parameterNode else None
        events = (slicer.vtkSegmentation.SegmentAdded, slicer.vtkSegmentation.SegmentRemoved,
                  slicer.vtkSegmentation.SegmentModified)
        for node in slicer.util.getNodesByClass("vtkMRMLSegmentationNode"):
            for event in events:
                observed = self.hasObserver(node, event, self.onSegmentsChanged)
                if node is not segmentation and observed:
                    self.removeObserver(node, event, self.onSegmentsChanged)
                elif node is segmentation and not observed:
                    self.addObserver(node, event, self.onSegmentsChanged)

    def onSegmentsChanged(self, caller=None, event=None) -> None:
        self._fillSegmentComboBox()

    def _fillSegmentComboBox(self) -> None:
        combo = self.ui.segmentComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        segmentation = self._parameterNode.segmentation if self._parameterNode else None
        wanted = self._parameterNode.segmentID if self._parameterNode else ""
        if segmentation is not None:
            segments = segmentation.GetSegmentation()
            for index in range(segments.GetNumberOfSegments()):
                combo.addItem(segments.GetNthSegment(index).GetName(), segments.GetNthSegmentID(index))
            position = combo.findData(wanted) if wanted else -1
            if position < 0 and combo.count > 0:
                position = 0
            combo.setCurrentIndex(position)
            if position >= 0 and combo.itemData(position) != wanted:
                self._parameterNode.segmentID = combo.itemData(position)
        if combo.count == 0 and wanted:
            # No segmentation or no segment: a leftover ID would name a segment that is not there.
            self._parameterNode.segmentID = ""
        combo.blockSignals(wasBlocked)

    def onSegmentSelected(self, index: int) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.segmentID = self.ui.segmentComboBox.itemData(index)

    def _queueTargetIfChanged(self) -> None:
        """Target changes go through the queue, so a running click finishes on the old target."""
        if not self._parameterNode:
            return
        segmentation = self._parameterNode.segmentation
        segmentId = self._parameterNode.segmentID or None
        if segmentation is not None and segmentId is not None and \
                segmentation.GetSegmentation().GetSegment(segmentId) is None:
            segmentId = None
        target = (self._parameterNode.inputVolume, segmentation, segmentId)
        if target == self._target:
            return
        self._target = target
        self.queue.add("target", lambda: self.logic.set_target(*target))

    # -- connection ---------------------------------------------------------------------------
    def _connect(self) -> bool:
        """Make sure the Logic talks to the address and key in the GUI; False on a bad address.
        The Logic switches servers in queue order, after the requests already asked for."""
        url = self.ui.serverUrlLineEdit.text.strip()
        key = self.ui.apiKeyLineEdit.text.strip() or None
        timeout = float(self.ui.timeoutSpinBox.value)
        caBundle = self.ui.caBundlePathLineEdit.currentPath.strip() or None
        if (url, key, timeout, caBundle) == self._connection:
            return True
        try:  # checks the address (e.g. a missing http://) and the certificate file now
            SAM3DClient(url, api_key=key, ca_bundle=caBundle)
        except SAM3DError as error:
            self._showServerStatus(user_message(error), error=True)
            self._showStatus(user_message(error), error=True)
            return False
        self._connection = (url, key, timeout, caBundle)
        self.queue.add("server", lambda: self.logic.connect(url, api_key=key, timeout=timeout,
                                                             ca_bundle=caBundle) and None)
        # The capabilities tell whether the model takes boxes (the Box button).
        self.queue.add("connect", self.logic.prepare_server_status)
        return True

    def onServerUrlEdited(self) -> None:
        qt.QSettings().setValue(SERVER_URL_SETTING, self.ui.serverUrlLineEdit.text.strip())

    def onTimeoutChanged(self, seconds: int) -> None:
        qt.QSettings().setValue(TIMEOUT_SETTING, int(seconds))

    def onCABundleChanged(self, path: str) -> None:
        qt.QSettings().setValue(CA_BUNDLE_SETTING, path.strip())

    def onTestConnection(self) -> None:
        self.onServerUrlEdited()
        connection = self._connection
        if self._connect():
            self._showServerStatus("Connecting...", error=False)
            if self._connection == connection:  # _connect asked already when the settings changed
                self.queue.add("connect", self.logic.prepare_server_status)

    def _showServerStatus(self, text: str, error: bool) -> None:
        self.ui.serverStatusLabel.text = text
        self.ui.serverStatusLabel.setStyleSheet(ERROR_STYLE if error else OK_STYLE)

    def _showStatus(self, text: str, error: bool = False) -> None:
        self.ui.statusLabel.text = text
        self.ui.statusLabel.setStyleSheet(ERROR_STYLE if error else OK_STYLE)

    # -- clicks -------------------------------------------------------------------------------
    def onPlaceToggled(self, positive: bool, on: bool) -> None:
        other = self.ui.negativeButton if positive else self.ui.positiveButton
        if on:
            if not self._ensureTarget():
                (self.ui.positiveButton if positive else self.ui.negativeButton).checked = False
                return
            other.checked = False
            self._placingPositive = positive
            # The volume's own prompt list: adopted only through its reference to the volume, and
            # points it already holds (a loaded scene) are never sent.
            node = self.logic.prompt_list(self._parameterNode.inputVolume)
            if not self.hasObserver(node, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onPointDefined):
                self.addObserver(node, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onPointDefined)
            self._placeMode.start(node)
        elif not other.checked:
            self._stopPlacing()

    def _stopPlacing(self) -> None:
        """Leave Place mode and give back the "place multiple points" setting."""
        if self._placeMode is not None:
            self._placeMode.stop()

    def onInteractionModeChanged(self, caller=None, event=None) -> None:
        interactionNode = slicer.app.applicationLogic().GetInteractionNode()
        if interactionNode.GetCurrentInteractionMode() != interactionNode.Place:
            for button in (self.ui.positiveButton, self.ui.negativeButton):
                wasBlocked = button.blockSignals(True)
                button.checked = False
                button.blockSignals(wasBlocked)
            self._stopPlacing()
            if self._placingBoxRoi is not None:  # placed (event still to come) or cancelled
                qt.QTimer.singleShot(0, self._endBoxPlacing)

    def _ensureTarget(self) -> bool:
        """An input volume, a server address, and a segment to write into (created if needed:
        also when the selected segment ID is no longer in the segmentation)."""
        if not self._parameterNode or not self._parameterNode.inputVolume:
            self._showStatus("Select an input volume first.", error=True)
            return False
        if not self._connect():
            return False
        segmentation, segmentId = self.logic.ensure_target(
            self._parameterNode.inputVolume, self._parameterNode.segmentation, self._parameterNode.segmentID)
        self._parameterNode.segmentation = segmentation
        self._parameterNode.segmentID = segmentId
        return True

    def onPointDefined(self, caller, event) -> None:
        """Auto-run: every newly placed point of the volume's prompt list is queued as a click."""
        volume = self._parameterNode.inputVolume if self._parameterNode else None
        clicks = self.logic.new_clicks(caller, self._placingPositive, volume)
        if clicks and not self._ensureTarget():
            for click in clicks:
                index = caller.GetNthControlPointIndexByID(click.control_point_id)
                if index >= 0:
                    caller.RemoveNthControlPoint(index)
            return
        for click in clicks:
            self.queue.add_click(click)
        self._updateButtons()

    # -- box ----------------------------------------------------------------------------------
    def onBox(self) -> None:
        """Place a new box ROI (it replaces the volume's box); it is sent once placed."""
        if not self._ensureTarget():
            return
        for button in (self.ui.positiveButton, self.ui.negativeButton):
            button.checked = False
        roi = self.logic.new_box_roi(self._parameterNode.inputVolume)
        self._observeBoxRoi(roi)
        self._placingBoxRoi = roi
        self._placeMode.start(roi, persistent=False)
        self._showStatus("Box: click two opposite corners in a slice view (a box on that slice), "
                         "or drag its handles later to change it.")

    def _observeBoxRoi(self, roi) -> None:
        """Follow the volume's box ROI (one at a time): placed, dragged, edited."""
        if roi is self._boxRoi:
            return
        events = ((slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onBoxPlaced),
                  (slicer.vtkMRMLMarkupsNode.PointStartInteractionEvent, self.onBoxDragStarted),
                  (slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent, self.onBoxDragEnded),
                  (vtk.vtkCommand.ModifiedEvent, self.onBoxModified))
        for event, method in events:
            if self._boxRoi is not None and self.hasObserver(self._boxRoi, event, method):
                self.removeObserver(self._boxRoi, event, method)
            if roi is not None:
                self.addObserver(roi, event, method)
        self._boxRoi = roi
        self._boxDragging = False

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeRemoved(self, caller, event, node) -> None:
        """The box ROI deleted by the user while the lesion holds the box: shown again, once the
        removal has finished (nodes are not added from inside the scene's event)."""
        if node is None or node is not self._boxRoi or self._placingBoxRoi is not None or slicer.mrmlScene.IsClosing():
            return
        self._observeBoxRoi(None)
        if self.logic.user_removed_box():
            qt.QTimer.singleShot(0, self._showDeletedBox)

    def _showDeletedBox(self) -> None:
        if self.logic is None or self.logic.volume_node is None:
            return
        self._showStatus(self.logic.show_lesion_box())
        self._observeBoxRoi(self.logic.box_roi())

    def onBoxPlaced(self, caller, event) -> None:
        if caller is self._placingBoxRoi and roi_defined(caller):
            self._endBoxPlacing()

    def _endBoxPlacing(self) -> None:
        """Placing ended: a placed box is sent (2D when drawn in a slice view); a box given up
        (Esc, another mode) is removed and the lesion's box shows again."""
        roi, self._placingBoxRoi = self._placingBoxRoi, None
        if roi is None:
            return
        if not roi_defined(roi):
            self.logic.cancel_box(roi)
            self._updateButtons()
            return
        sliceNormal = self._sliceNormalUnderMouse()
        if sliceNormal is not None:  # drawn on a slice: a 2D box there (Slicer pads its depth)
            self._boxNote = self.logic.make_box_2d(roi, sliceNormal)  # shown with the box's result
        self._queueBox()

    @staticmethod
    def _sliceNormalUnderMouse():
        """World normal of the slice view the mouse is in (None: a 3D view or no view)."""
        crosshair = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        sliceNode = crosshair.GetCursorPositionXYZ([0.0, 0.0, 0.0]) if crosshair is not None else None
        if sliceNode is None:
            return None
        sliceToRas = sliceNode.GetSliceToRAS()
        return [sliceToRas.GetElement(row, 2) for row in range(3)]

    def onBoxDragStarted(self, caller, event) -> None:
        self._boxDragging = True

    def onBoxDragEnded(self, caller, event) -> None:
        self._boxDragging = False
        self.boxEditTimer.stop()
        self._queueBox()

    def onBoxModified(self, caller, event) -> None:
        if not self._boxDragging and self._placingBoxRoi is None:
            self.boxEditTimer.start()  # restarts: sent once the edits rest

    def _queueBox(self) -> None:
        """The Logic sends the box only when it differs from the lesion's box."""
        self.queue.add("box", lambda: self.logic.prepare_box())

    def onUndo(self) -> None:
        self.queue.add("undo", self.logic.prepare_undo)

    def onReset(self) -> None:
        self.queue.add("reset", lambda: self.logic.reset())

    def onNextLesion(self) -> None:
        if not self._parameterNode or not self._parameterNode.inputVolume:
            self._showStatus("Select an input volume first.", error=True)
            return
        self.queue.add("next lesion", self._startNextLesion)

    def _startNextLesion(self) -> None:
        segmentId = self.logic.next_lesion()
        self._target = (self.logic.volume_node, self.logic.segmentation_node, segmentId)
        self._parameterNode.segmentation = self.logic.segmentation_node
        self._parameterNode.segmentID = segmentId

    # -- results ------------------------------------------------------------------------------
    def _wake(self) -> None:
        if not self.timer.isActive():
            self.timer.start()

    def onTimer(self) -> None:
        self.queue.pump()
        if self._batch is not None:
            self._batch.pump()
            if self._batch.finished:
                self._batch = None
                self._updateBatchButtons()
        if self.queue.idle and self._batch is None:
            self.timer.stop()
        waited = self.queue.busy_seconds
        busy = waited > BUSY_INDICATOR_DELAY_S
        self.ui.busyProgressBar.setVisible(busy)
        if busy:  # only after a while: quick clicks never flash an indicator
            queued = self.queue.queued_clicks
            self._showStatus(f"Waiting for the server ({waited:.0f} s)"
                             + (f", {queued} click(s) queued" if queued else "") + "...")

    def onJobDone(self, name: str, result, error: Optional[BaseException]) -> None:
        if error is not None:
            message = user_message(error)
            if name == "connect":
                self._showServerStatus(message, error=True)
            self._showStatus(message, error=True)
            if not isinstance(error, SAM3DError):
                import logging
                logging.error("SAM3DPrompt %s failed", name, exc_info=error)
        elif name == "connect":
            self._showServerStatus(result, error=False)
        elif name in ("clicks", "box"):
            spacing = self.logic.volume_node.GetSpacing()
            millilitres = result.voxels * spacing[0] * spacing[1] * spacing[2] / 1000.0
            segmentName = self.ui.segmentComboBox.currentText
            details = "image encoded, " if result.encoder_ran else ""
            if result.replayed:
                details += "session renewed, "
            note = self._boxNote if name == "box" and self._boxNote else ""
            self._boxNote = None
            self._showStatus(f"{segmentName}: {result.voxels} voxels ({millilitres:.2f} ml); "
                             f"{details}{result.seconds:.2f} s" + (f". {note}" if note else ""))
        elif name in ("undo", "reset", "next lesion"):
            self._showStatus(f"{name.capitalize()}: done.")
        self._updateButtons()

    def _updateButtons(self) -> None:
        if self.logic is None:
            return
        hasVolume = bool(self._parameterNode and self._parameterNode.inputVolume)
        self.ui.positiveButton.enabled = hasVolume
        self.ui.negativeButton.enabled = hasVolume
        self.ui.nextLesionButton.enabled = hasVolume
        self.ui.undoButton.enabled = self.logic.can_undo or self.queue.busy
        self.ui.resetButton.enabled = self.logic.can_undo
        self._updateBoxButton(hasVolume)
        if self._placingBoxRoi is None:
            # Undo and reset put back or remove the box ROI: follow the volume's current one.
            self._observeBoxRoi(self.logic.box_roi(self._parameterNode.inputVolume) if hasVolume else None)

    def _updateBoxButton(self, hasVolume: bool) -> None:
        supported = self.logic.supports_box
        self.ui.boxButton.enabled = hasVolume and supported is not False
        if supported is False:
            model = (self.logic.capabilities or {}).get("model", {}).get("name", "?")
            prompts = ", ".join((self.logic.capabilities or {}).get("prompts", [])) or "none"
            self.ui.boxButton.toolTip = (f"The server's model '{model}' takes no box prompt (its prompts: "
                                         f"{prompts}). Segment with clicks, or start the server with a "
                                         "model trained with boxes.")
        else:
            self.ui.boxButton.toolTip = self._boxToolTip

    # -- batch --------------------------------------------------------------------------------
    def onSavePrompts(self) -> None:
        """Save the input volume's clicks and boxes as <prompts folder>/<volume>.mrk.json, the
        one file the batch (here and in `sam3d batch`) reads."""
        folder = self.ui.promptsFolderButton.directory
        volume = self._parameterNode.inputVolume if self._parameterNode else None
        if volume is None:
            self.ui.batchStatusLabel.text = "Prompts not saved: select an input volume first."
            self.ui.batchStatusLabel.setStyleSheet(ERROR_STYLE)
            return
        try:
            path = self.logic.save_prompts(folder, volume)
        except (PromptError, OSError) as error:
            self.ui.batchStatusLabel.text = f"Prompts not saved: {error}"
            self.ui.batchStatusLabel.setStyleSheet(ERROR_STYLE)
            return
        qt.QSettings().setValue(PROMPTS_FOLDER_SETTING, folder)
        self.ui.batchStatusLabel.text = f"Saved the prompts of '{volume.GetName()}' to {path}"
        self.ui.batchStatusLabel.setStyleSheet(OK_STYLE)

    def onRunBatch(self) -> None:
        self.ui.batchStatusLabel.setStyleSheet(OK_STYLE)
        folder = self.ui.promptsFolderButton.directory
        if not folder or not os.path.isdir(folder):
            self.ui.batchStatusLabel.text = "Choose the folder that holds the saved prompts first."
            return
        qt.QSettings().setValue(PROMPTS_FOLDER_SETTING, folder)
        if self._batch is not None or not self._connect():
            return
        volumes = [node for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                   if not node.IsA("vtkMRMLLabelMapVolumeNode")
                   and has_saved_prompts(folder, node)]
        if not volumes:
            self.ui.batchStatusLabel.text = (f"No loaded volume has saved prompts in {folder} "
                                             "(expected <volume name>.mrk.json).")
            return
        cases = load_cases(slicer.mrmlScene, volumes, folder)
        self.ui.batchProgressBar.setRange(0, len(cases))
        self.ui.batchProgressBar.setValue(0)
        self.ui.batchProgressBar.setVisible(True)
        self.ui.batchStatusLabel.text = f"Segmenting {len(cases)} volume(s)..."
        url, key, timeout, caBundle = self._connection
        # A queue of its own: clicks never wait behind the batch.
        self._batch = BatchRun(SAM3DClient(url, api_key=key, timeout=timeout, ca_bundle=caBundle),
                               cases, slicer.mrmlScene,
                               on_progress=self._onBatchProgress, on_work=self._wake)
        self._updateBatchButtons()

    def onCancelBatch(self) -> None:
        if self._batch is not None:
            self._batch.cancel()
            self.ui.batchStatusLabel.text = "Cancelling after the request in flight..."

    def _onBatchProgress(self, run) -> None:
        self.ui.batchProgressBar.setValue(len(run.results))
        failed = [r for r in run.results if r.error]
        lines = [f"{len(run.results)} of {run.total} done, {len(failed)} failed or cancelled."]
        lines += [f"{r.volume_name}: {r.error}" for r in failed]
        self.ui.batchStatusLabel.text = "\n".join(lines)

    def _updateBatchButtons(self) -> None:
        self.ui.runBatchButton.enabled = self._batch is None
        self.ui.cancelBatchButton.enabled = self._batch is not None

    # -- shortcuts ----------------------------------------------------------------------------
    def _setTooltipsWithShortcuts(self) -> None:
        buttons = {"positive": self.ui.positiveButton, "negative": self.ui.negativeButton,
                   "undo": self.ui.undoButton, "reset": self.ui.resetButton,
                   "nextLesion": self.ui.nextLesionButton}
        for name, button in buttons.items():
            button.toolTip = f"{button.toolTip} (shortcut: {SHORTCUTS[name]})"
        self.ui.resetButton.toolTip += "; Undo brings the lesion back"

    def _installShortcuts(self) -> None:
        self._removeShortcuts()
        actions = {
            "positive": lambda: self.ui.positiveButton.toggle(),
            "negative": lambda: self.ui.negativeButton.toggle(),
            "undo": self.onUndo,
            "reset": self.onReset,
            "nextLesion": self.onNextLesion,
        }
        for name, action in actions.items():
            shortcut = qt.QShortcut(qt.QKeySequence(SHORTCUTS[name]), slicer.util.mainWindow())
            shortcut.connect("activated()", action)
            self._shortcuts.append(shortcut)

    def _removeShortcuts(self) -> None:
        for shortcut in self._shortcuts:
            shortcut.setParent(None)
            shortcut.deleteLater()
        self._shortcuts = []


#
# Logic
#
class SAM3DPromptLogic(ScriptedLoadableModuleLogic, PromptLogic):
    """All the work, without Qt; see ``SAM3DPromptLib.logic.PromptLogic``. From the Python
    console::

        logic = slicer.modules.SAM3DPromptWidget.logic  # or SAM3DPromptLogic()
        logic.connect("http://127.0.0.1:8000")
        segmentation = logic.create_segmentation(volume)
        logic.set_target(volume, segmentation, logic.add_lesion_segment(segmentation))
        logic.click([12.5, -40.0, 88.0])                  # world RAS, positive
        logic.click([15.0, -38.0, 88.0], positive=False)  # negative
        logic.undo()
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        PromptLogic.__init__(self, client=None, scene=slicer.mrmlScene)

    def getParameterNode(self):
        return SAM3DPromptParameterNode(super().getParameterNode())


#
# Test
#
class SAM3DPromptTest(ScriptedLoadableModuleTest):
    """The click scenario in real Slicer, against a real server.

    The server: ``SAM3D_TEST_SERVER_URL`` if set; otherwise the test starts
    ``sam3d serve --model ${SAM3D_TEST_MODEL:-default}`` on a free port, with the ``sam3d``
    command found on PATH (or ``SAM3D_SERVER_COMMAND``, e.g. ``/path/to/.venv/bin/sam3d``).
    Without either, the test is skipped with that advice.
    """

    shape = (40, 48, 44)  # k, j, i
    tumorCentre = (20, 23, 21)
    tumorRadius = 6

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()
        self._server = None

    def tearDown(self) -> None:
        if self._server is not None:
            self._server.terminate()
            try:
                self._server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._server.kill()
            self._server = None

    def runTest(self) -> None:
        for test in (self.test_SAM3DPrompt_ClickScenario, self.test_SAM3DPrompt_Widget):
            self.setUp()
            try:
                test()
            except unittest.SkipTest as reason:
                self.delayDisplay(f"Skipped: {reason}")
            finally:
                self.tearDown()

    # -- helpers ------------------------------------------------------------------------------
    def _serverUrl(self) -> str:
        url = os.environ.get("SAM3D_TEST_SERVER_URL")
        if url:
            return url
        command = os.environ.get("SAM3D_SERVER_COMMAND") or shutil.which("sam3d")
        if not command:
            raise unittest.SkipTest("no SAM3D server: set SAM3D_TEST_SERVER_URL, or put the "
                                    "`sam3d` command on PATH (or in SAM3D_SERVER_COMMAND)")
        import socket
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self._server = subprocess.Popen(
            [command, "serve", "--host", "127.0.0.1", "--port", str(port),
             "--model", os.environ.get("SAM3D_TEST_MODEL", "default")])
        url = f"http://127.0.0.1:{port}"
        client = SAM3DClient(url, timeout=2)
        deadline = time.monotonic() + 180
        while True:
            try:
                client.health()
                return url
            except SAM3DError:
                if self._server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"`{command} serve` did not start (exit code {self._server.poll()})")
                time.sleep(0.5)

    def _phantom(self):
        """A round 'tumor' in soft tissue, on an oblique, flipped, off-origin grid with non-unit
        spacing, under a rotating and translating parent transform."""
        rng = np.random.default_rng(7)
        k, j, i = np.indices(self.shape)
        spacing = np.array([2.0, 0.9, 0.8])  # k, j, i
        distance = np.sqrt(sum(((a - c) * s) ** 2 for a, c, s in zip((k, j, i), self.tumorCentre, spacing)))
        tumor = distance <= self.tumorRadius * 1.6
        array = (40 + 15 * rng.standard_normal(self.shape)).astype(np.int16)
        array[tumor] += 90
        angle = np.deg2rad(20.0)
        rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
        directions = rotation @ np.diag([1.0, -1.0, 1.0])  # j axis flipped
        ijkToRas = np.eye(4)
        ijkToRas[:3, :3] = directions @ np.diag(spacing[::-1])
        ijkToRas[:3, 3] = [-60.0, 25.0, 110.0]
        volume = slicer.util.addVolumeFromArray(array, ijkToRAS=ijkToRas, name="SAM3DPromptTestVolume")
        transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        toParent = vtk.vtkTransform()
        toParent.Translate(5, -12, 30)
        toParent.RotateWXYZ(25, 0.2, 1.0, 0.3)
        transform.SetMatrixTransformToParent(toParent.GetMatrix())
        volume.SetAndObserveTransformNodeID(transform.GetID())
        return volume, tumor

    @staticmethod
    def _world(volume, kji):
        ijkToRas = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(ijkToRas)
        local = ijkToRas.MultiplyPoint([kji[2], kji[1], kji[0], 1.0])[:3]
        toWorld = vtk.vtkGeneralTransform()
        volume.GetParentTransformNode().GetTransformToWorld(toWorld)
        return toWorld.TransformPoint(local)

    @staticmethod
    def _segmentArray(segmentation, segmentId, volume):
        return slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume).astype(bool)

    # -- tests --------------------------------------------------------------------------------
    def test_SAM3DPrompt_ClickScenario(self) -> None:
        """Logic: click, correct, undo bit for bit, hand edit as prior, server down untouched."""
        url = self._serverUrl()
        volume, tumor = self._phantom()
        logic = SAM3DPromptLogic()
        logic.connect(url, timeout=120)
        segmentation = logic.create_segmentation(volume)
        segmentId = logic.add_lesion_segment(segmentation)
        logic.set_target(volume, segmentation, segmentId)
        prompts = logic.prompt_list()

        prompts.AddControlPointWorld(*self._world(volume, self.tumorCentre))
        first = logic.click_points(logic.new_clicks(prompts, positive=True))
        info = logic.client.session_info(logic.session_id)
        np.testing.assert_allclose(info["points"][0], self.tumorCentre, atol=1e-3)
        afterFirst = self._segmentArray(segmentation, segmentId, volume)
        self.assertEqual(int(afterFirst.sum()), first.voxels)
        self.assertTrue(afterFirst[self.tumorCentre])
        dice = 2 * (afterFirst & tumor).sum() / max(afterFirst.sum() + tumor.sum(), 1)
        self.delayDisplay(f"One click: {first.voxels} voxels, Dice {dice:.3f} against the phantom tumor")

        edge = (self.tumorCentre[0], self.tumorCentre[1] + 12, self.tumorCentre[2] + 12)
        prompts.AddControlPointWorld(*self._world(volume, edge))
        logic.click_points(logic.new_clicks(prompts, positive=False))
        logic.undo()
        np.testing.assert_array_equal(self._segmentArray(segmentation, segmentId, volume), afterFirst)
        self.assertEqual(prompts.GetNumberOfControlPoints(), 1)

        # A hand edit (as the Segment Editor does) is sent as the prior of the next click.
        edited = afterFirst.copy()
        edited[: self.tumorCentre[0]] = False
        slicer.util.updateSegmentBinaryLabelmapFromArray(edited.astype(np.uint8), segmentation, segmentId, volume)
        self.assertTrue(logic.click(self._world(volume, self.tumorCentre)).prior_sent)

        # Server down: the segment is left as it was and the error says what to do.
        before = self._segmentArray(segmentation, segmentId, volume)
        logic.connect("http://127.0.0.1:9", timeout=5)
        with self.assertRaises(SAM3DError) as caught:
            logic.click(self._world(volume, self.tumorCentre))
        self.assertIn("sam3d serve", user_message(caught.exception))
        np.testing.assert_array_equal(self._segmentArray(segmentation, segmentId, volume), before)
        self.delayDisplay("Click scenario passed")

    def test_SAM3DPrompt_Widget(self) -> None:
        """Widget: a point placed in the positive list is sent on its own and lands in a new segment."""
        url = self._serverUrl()
        volume, _ = self._phantom()
        slicer.util.selectModule("SAM3DPrompt")
        widget = slicer.modules.SAM3DPromptWidget
        widget.ui.serverUrlLineEdit.text = url
        widget._parameterNode.inputVolume = volume
        widget.ui.positiveButton.checked = True  # place mode on, segmentation created
        self.assertIsNotNone(widget._parameterNode.segmentation)
        widget.logic.prompt_list(volume).AddControlPointWorld(*self._world(volume, self.tumorCentre))
        deadline = time.monotonic() + 120
        while not widget.queue.idle and time.monotonic() < deadline:
            slicer.app.processEvents()
            time.sleep(0.02)
        self.assertTrue(widget.queue.idle)
        self.assertIn("voxels", widget.ui.statusLabel.text)
        segmentation = widget._parameterNode.segmentation
        segmentId = widget._parameterNode.segmentID
        self.assertTrue(self._segmentArray(segmentation, segmentId, volume)[self.tumorCentre])
        widget.ui.positiveButton.checked = False
        self.delayDisplay("Widget test passed")
