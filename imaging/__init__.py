"""DICOM image helpers that the service and the model pipelines both need.

The node (:mod:`dicom_node`) and the pipelines (:mod:`pipelines`) import this
package; it imports neither, so the one decision each helper makes (is this
series contrast-enhanced, what does the radiologist see in these pixels, is
this SOP class an image) is made by the same code on both sides.

Modules: :mod:`~imaging.values` (attribute values as routing reads them),
:mod:`~imaging.contrast` (enhanced or not, and why), :mod:`~imaging.pixels`
(display pixels: modality LUT, VOI, MONOCHROME1) and :mod:`~imaging.storage`
(image storage classes).
"""
