"""The bundled demo CRM: a small, legacy-style CRM that knows nothing of the gateway.

``crm-gateway demo`` runs it behind the gateway so a newcomer sees the gateway work
with no CRM of their own, and every end-to-end test puts the real gateway in front
of it, then asks it (``/__crm/requests``, or :data:`CRMLog` in-process) what actually
reached it. Demo users and their password ``demo`` are for the demo only.

Modules: ``sessions`` (users, login, logout), ``pages`` (browser pages), ``api``
(the mobile app's JSON API), ``testbench`` (WebSocket, streams, echo, slow),
``record`` and ``instrument`` (the record of what arrived), ``app`` (assembly).
"""

from gateway.demo_crm.app import create_app, main, start
from gateway.demo_crm.record import Action, CRMLog, CRMRecord, LoginAttempt, RequestSeen
from gateway.demo_crm.sessions import COOKIE, DEMO_PASSWORD, DEMO_USERS
from gateway.demo_crm.testbench import pattern_chunk

__all__ = [
    "COOKIE",
    "DEMO_PASSWORD",
    "DEMO_USERS",
    "Action",
    "CRMLog",
    "CRMRecord",
    "LoginAttempt",
    "RequestSeen",
    "create_app",
    "main",
    "pattern_chunk",
    "start",
]
