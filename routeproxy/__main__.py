import sys

from routeproxy.cli import main

sys.exit(main())
