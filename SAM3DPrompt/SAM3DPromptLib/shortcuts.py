"""The module's keyboard shortcuts, one table for both faces: Slicer's module and the web app.

None of them is a key Slicer's slice, 3D or markups views bind (r resets the field of view, s
snaps a point to the slice, ...: Testing/test_module_static.py holds the list), so they never
take a key from the views.
"""

SHORTCUTS = {
    "positive": "A",
    "negative": "D",
    "undo": "Ctrl+Z",
    "reset": "Shift+R",
    "nextLesion": "N",
}
