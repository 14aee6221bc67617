"""gunicorn entry: gunicorn -w 4 -b 0.0.0.0:8443 'fleet.wsgi:app'
(GREENGATE_FLEET_CONFIG names the config file; the environment may set any key).

Each worker gets a bundle publisher (fleet/publisher.py) that puts list changes
on MQTT retained; an empty [mqtt] host turns it off (kiosks then use HTTP)."""

import os

from .app import create_app
from .config import load
from .publisher import for_app

config = load(os.environ.get("GREENGATE_FLEET_CONFIG"))
app = create_app(config, publisher=for_app(config))
