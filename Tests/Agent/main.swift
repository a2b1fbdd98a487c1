// Placeholder; replaced by the crash-consistency agent.
print("es-test-agent")
