"""crm-gateway: a location-aware access gateway in front of a legacy CRM."""

__version__ = "0.1.0"
