"""Every page of a bank's dashboard, in the order their routes are matched."""

from __future__ import annotations

from services.ledger import ui, ui_coordinator, ui_offers

UI_ROUTERS = (ui.router, ui_coordinator.router, ui_offers.router)
