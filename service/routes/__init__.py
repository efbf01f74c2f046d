"""The service's routes, one concept a module; `service.app.create_app` puts them together."""
