"""The web console: operators see and steer the node, in the browser.

Served by the main process on ``monitoring.host`` / ``monitoring.port``
(:mod:`dicom_node.console.server`), next to the open monitoring endpoints
``/health`` and ``/metrics``. Everything else needs a login
(:mod:`dicom_node.console.accounts`): local accounts with a role, sessions
in HTTP-only cookies, a CSRF token on every form that changes something, and
each change in the audit trail with the user who made it.
"""
