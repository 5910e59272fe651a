namespace Ovis.Volumes;

/// <summary>Why a control-plane operation on volumes was refused.</summary>
public enum VolumeErrorCode
{
    NotFound,
    AlreadyExists,
    InvalidArgument,
    InUse,
    /// <summary>Other nodes kept changing the registry (or the same volume) under the request: try again.</summary>
    Conflict,
    /// <summary>The operation needs space the store does not have (a merge or flatten copies blocks).</summary>
    NoSpace,
}

/// <summary>A refused control-plane operation; the message is one line meant for an operator.</summary>
public sealed class VolumeException(VolumeErrorCode code, string message) : Exception(message)
{
    public VolumeErrorCode Code { get; } = code;
}
