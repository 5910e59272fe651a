namespace Ovis.Node;

/// <summary>A node could not start; the message is one line meant for an operator.</summary>
public sealed class NodeStartException(string message, Exception? innerException = null) : Exception(message, innerException);
