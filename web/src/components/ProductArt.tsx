// A calm, generated tile per product: no image assets to ship.

function hue(id: string): number {
  let h = 0;
  for (const ch of id) h = (h * 31 + ch.charCodeAt(0)) % 360;
  return h;
}

export function ProductArt({ id, name, size = "large" }: { id: string; name: string; size?: "large" | "small" }) {
  const h = hue(id);
  const initial = name.trim().charAt(0).toUpperCase() || "?";
  return (
    <div className={`product-art product-art-${size}`} aria-hidden="true">
      <svg viewBox="0 0 120 80" preserveAspectRatio="xMidYMid slice" width="100%" height="100%">
        <rect width="120" height="80" fill={`hsl(${h} 45% 92%)`} />
        <circle cx="96" cy="14" r="30" fill={`hsl(${h} 50% 85%)`} />
        <circle cx="18" cy="74" r="22" fill={`hsl(${(h + 30) % 360} 45% 88%)`} />
        <text
          x="60"
          y="50"
          textAnchor="middle"
          fontSize="30"
          fontWeight="600"
          fill={`hsl(${h} 35% 38%)`}
          fontFamily="system-ui, sans-serif"
        >
          {initial}
        </text>
      </svg>
    </div>
  );
}
