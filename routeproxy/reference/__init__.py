"""The reference pages of the documentation, rendered as Markdown from the code's own declarations: the settings,
the commands' parser, the Prometheus registry, the app's routes and the errors the code raises, the Redis key layout.
The site's build hook (``docs/hooks.py``) calls ``pages.render`` for each ``<!-- reference: NAME -->`` line of a
page, so the pages cannot drift from the code and no generated text is kept in the repository. A tool: nothing on
the request path or in the command imports it."""
