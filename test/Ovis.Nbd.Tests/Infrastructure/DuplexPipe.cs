using System.IO.Pipelines;

namespace Ovis.Nbd.Tests.Infrastructure;

internal sealed class DuplexPipe(PipeReader input, PipeWriter output) : IDuplexPipe
{
    public PipeReader Input { get; } = input;

    public PipeWriter Output { get; } = output;
}
