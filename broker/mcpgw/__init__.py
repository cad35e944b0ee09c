"""The MCP gateway (``broker mcp``): an agent's MCP client talks to it, it asks the sidecar
for a decision and a credential per tool call, and calls the upstream MCP server with the
credential. Needs the optional ``mcp`` extra (``pip install 'agent-credential-broker[mcp]'``)."""
