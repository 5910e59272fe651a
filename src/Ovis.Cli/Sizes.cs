using System.Diagnostics.CodeAnalysis;
using System.Globalization;

namespace Ovis.Cli;

/// <summary>
/// Sizes as operators type and read them: <c>10G</c>, <c>512MiB</c>, <c>4096</c> in, and
/// <c>1.0 GiB</c> out. Every suffix is a power of 1024, as in qemu-img and Sheepdog's dog.
/// </summary>
public static class Sizes
{
    private const string Usage = "use a number with an optional K, M, G or T suffix";

    private static readonly string[] Units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

    /// <summary>
    /// Parses a positive whole number of bytes with an optional suffix: K, M, G, T or KiB, MiB,
    /// GiB, TiB (case-insensitive; B for plain bytes). On failure <paramref name="error"/> is
    /// one line such as <c>invalid size '12Q': use a number with an optional K, M, G or T suffix</c>.
    /// </summary>
    public static bool TryParse(string? text, out long bytes, [NotNullWhen(false)] out string? error)
    {
        bytes = 0;
        var s = (text ?? "").Trim();

        var digits = 0;
        while (digits < s.Length && char.IsAsciiDigit(s[digits]))
        {
            digits++;
        }

        // A fraction needs digits on both sides of the point ("1.5"); "1." or ".5" is just malformed.
        var fractionEnd = digits;
        if (digits > 0 && digits + 1 < s.Length && s[digits] == '.' && char.IsAsciiDigit(s[digits + 1]))
        {
            fractionEnd = digits + 1;
            while (fractionEnd < s.Length && char.IsAsciiDigit(s[fractionEnd]))
            {
                fractionEnd++;
            }
        }

        if (digits == 0)
        {
            error = s.StartsWith('-') && s.Length > 1 && char.IsAsciiDigit(s[1])
                ? $"invalid size '{text}': a size must be greater than zero"
                : $"invalid size '{text}': {Usage}";
            return false;
        }

        if (!TryGetMultiplier(s.AsSpan(fractionEnd).TrimStart(), out var multiplier))
        {
            error = $"invalid size '{text}': {Usage}";
            return false;
        }

        if (fractionEnd > digits)
        {
            error = $"invalid size '{text}': {DescribeFraction(s[..fractionEnd], multiplier)}";
            return false;
        }

        // Twenty digits overflow a long whatever the suffix; the multiply is checked by division.
        if (digits > 19
            || !ulong.TryParse(s.AsSpan(0, digits), NumberStyles.None, CultureInfo.InvariantCulture, out var number)
            || number > (ulong)long.MaxValue / (ulong)multiplier)
        {
            error = $"invalid size '{text}': larger than the largest possible size (8 EiB)";
            return false;
        }

        if (number == 0)
        {
            error = $"invalid size '{text}': a size must be greater than zero";
            return false;
        }

        bytes = (long)number * multiplier;
        error = null;
        return true;
    }

    /// <summary>Like <see cref="TryParse"/>; throws <see cref="FormatException"/> with the same one-line message.</summary>
    public static long Parse(string text)
        => TryParse(text, out var bytes, out var error) ? bytes : throw new FormatException(error);

    /// <summary>
    /// Formats a byte count for people with one decimal and a binary unit:
    /// <c>512 B</c>, <c>4.0 KiB</c>, <c>1.0 GiB</c>, <c>1.5 TiB</c>.
    /// </summary>
    public static string Format(long bytes)
    {
        if (bytes < 1024)
        {
            return bytes.ToString(CultureInfo.InvariantCulture) + " B"; // also negative, should one ever come
        }

        var unit = 0;
        var value = (double)bytes;
        while (value >= 1024 && unit < Units.Length - 1)
        {
            value /= 1024;
            unit++;
        }

        // 1048575 bytes is 1023.999 KiB, which would print as "1024.0 KiB".
        if (Math.Round(value, 1) >= 1024 && unit < Units.Length - 1)
        {
            value /= 1024;
            unit++;
        }

        return value.ToString("F1", CultureInfo.InvariantCulture) + " " + Units[unit];
    }

    private static bool TryGetMultiplier(ReadOnlySpan<char> suffix, out long multiplier)
    {
        multiplier = suffix.Length switch
        {
            0 => 1,
            1 => char.ToUpperInvariant(suffix[0]) switch
            {
                'B' => 1,
                'K' => 1L << 10,
                'M' => 1L << 20,
                'G' => 1L << 30,
                'T' => 1L << 40,
                _ => 0,
            },
            3 when suffix[1..].Equals("iB", StringComparison.OrdinalIgnoreCase) => char.ToUpperInvariant(suffix[0]) switch
            {
                'K' => 1L << 10,
                'M' => 1L << 20,
                'G' => 1L << 30,
                'T' => 1L << 40,
                _ => 0,
            },
            _ => 0,
        };
        return multiplier != 0;
    }

    // "1.5G" is 1536M: say so, since the fix is usually a smaller unit rather than rounding.
    private static string DescribeFraction(string number, long multiplier)
    {
        const string WholeNumber = "sizes are whole numbers";
        if (!decimal.TryParse(number, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out var value))
        {
            return WholeNumber;
        }

        var bytes = value * multiplier;
        if (bytes != decimal.Truncate(bytes) || bytes <= 0 || bytes > long.MaxValue)
        {
            return $"{WholeNumber} of bytes";
        }

        var exact = (long)bytes;
        ReadOnlySpan<(long Multiplier, string Suffix)> units = [(1L << 40, "T"), (1L << 30, "G"), (1L << 20, "M"), (1L << 10, "K")];
        foreach (var (unit, suffix) in units)
        {
            if (unit < multiplier && exact % unit == 0)
            {
                return $"{WholeNumber}, e.g. {(exact / unit).ToString(CultureInfo.InvariantCulture)}{suffix}";
            }
        }

        return $"{WholeNumber}, e.g. {exact.ToString(CultureInfo.InvariantCulture)}";
    }
}
