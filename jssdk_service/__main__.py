"""`python -m jssdk_service`: the same as the `jssdk-service` command."""

import sys

from jssdk_service.cli import main

sys.exit(main())
