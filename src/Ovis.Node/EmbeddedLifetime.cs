using Microsoft.Extensions.Hosting;

namespace Ovis.Node;

/// <summary>
/// Replaces the console lifetime of the generic host: a node is also started inside tests and
/// other processes, so the signals are its owner's to handle (<c>ovis serve</c> does it), not
/// something every embedded node should grab.
/// </summary>
internal sealed class EmbeddedLifetime : IHostLifetime
{
    public Task WaitForStartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
