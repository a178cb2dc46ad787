"""The web page of the flight recorder (index.html, app.js, style.css), served by bootsvc/http/api.py."""
