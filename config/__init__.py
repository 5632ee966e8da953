"""routeproxy.defaults: this directory ships inside the package (see pyproject.toml), so an installed proxy has its defaults."""
