// /docs: Swagger UI on this server's own /openapi.json (relative, so a --public-url path
// prefix still finds it).
window.ui = SwaggerUIBundle({ url: "openapi.json", dom_id: "#swagger-ui", deepLinking: true });
